"""A text space that holds ANY Unicode string up to a length limit.

Gymnasium's ``Text`` enumerates a charset, so an observation with an unseen character
(an emoji in a search result, CJK in an API field) breaks ``contains`` and the
shared-memory vector env. ``UnicodeText`` checks only type, length and validity, and
registers its own shared-memory layout (one int32 code point per character plus a length
slot) so ``gym.make_vec(..., vectorization_mode="async")`` works with arbitrary text.
Valid means no surrogate code points: a Python ``str`` can hold one (e.g. from a JSON
``"\\ud800"`` escape) but no codec can write it; :func:`valid_unicode` replaces them
before an env returns text.
"""
from __future__ import annotations

from multiprocessing.sharedctypes import SynchronizedArray
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import multiprocessing as mp
import re

import numpy as np
from gymnasium.spaces import Space
from gymnasium.vector.utils import shared_memory as _shm
from gymnasium.vector.utils import space_utils as _su

# Code points sampled by ``sample()``: printable ASCII most of the time, plus a spread of
# other planes so fuzzing with sampled actions exercises non-ASCII paths.
_SAMPLE_RANGES = ((0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x4E00, 0x4FFF), (0x1F300, 0x1F5FF))
_SAMPLE_WEIGHTS = np.array([0.7, 0.1, 0.05, 0.1, 0.05])
_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_unicode(text: str) -> str:
    """``text`` with every surrogate code point replaced by U+FFFD, so any codec (and the space) accepts it."""
    try:
        text.encode("utf-8")  # the common case, in C: nothing to replace
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


class UnicodeText(Space[str]):
    """Any valid Unicode ``str`` with ``len(s) <= max_length``; no charset restriction."""

    def __init__(self, max_length: int, seed: int | np.random.Generator | None = None):
        if not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"UnicodeText max_length must be a positive int, got {max_length!r}")
        self.max_length = max_length
        super().__init__(shape=None, dtype=str, seed=seed)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and len(x) <= self.max_length and _SURROGATE.search(x) is None

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        if mask is not None or probability is not None:
            raise NotImplementedError("UnicodeText.sample does not support masks")
        rng = self.np_random
        length = int(rng.integers(0, min(self.max_length, 256) + 1))
        which = rng.choice(len(_SAMPLE_RANGES), size=length, p=_SAMPLE_WEIGHTS)
        chars = [chr(int(rng.integers(lo, hi + 1))) for lo, hi in (_SAMPLE_RANGES[w] for w in which)]
        return "".join(chars)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"UnicodeText(max_length={self.max_length})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, UnicodeText) and other.max_length == self.max_length

    def to_jsonable(self, sample_n: list[str]) -> list[str]:
        return list(sample_n)

    def from_jsonable(self, sample_n: list[str]) -> list[str]:
        return list(sample_n)


# --- vector-env support: slot layout is [length, cp_0, ..., cp_{max_length-1}] per env ---


@_shm.create_shared_memory.register(UnicodeText)
def _create(space: UnicodeText, n: int = 1, ctx: ModuleType = mp) -> SynchronizedArray:
    return ctx.Array(np.dtype(np.int32).char, n * (space.max_length + 1))


class SharedTextBatch(Sequence[str]):
    """A live view of the texts in shared memory, decoded on access.

    The async vector env reads its shared buffer ONCE and relies on the result being a view
    that later writes update (true for numpy arrays); a tuple of decoded strings would stay
    frozen at its first value. Copying the view (the env's ``copy=True``) gives a plain tuple.
    """

    def __init__(self, data: np.ndarray):
        self._data = data

    def __len__(self) -> int:
        return self._data.shape[0]

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return tuple(self)[i]
        row = self._data[i]
        return np.ascontiguousarray(row[1 : 1 + int(row[0])]).astype("<u4").tobytes().decode("utf-32-le")

    def __deepcopy__(self, memo: dict) -> tuple[str, ...]:
        return tuple(self)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    def __repr__(self) -> str:
        return f"SharedTextBatch({tuple(self)!r})"


@_shm.read_from_shared_memory.register(UnicodeText)
def _read(space: UnicodeText, shared_memory: SynchronizedArray, n: int = 1) -> SharedTextBatch:
    return SharedTextBatch(np.frombuffer(shared_memory.get_obj(), dtype=np.int32).reshape((n, space.max_length + 1)))


@_shm.write_to_shared_memory.register(UnicodeText)
def _write(space: UnicodeText, index: int, values: str, shared_memory: SynchronizedArray) -> None:
    if not space.contains(values):
        raise ValueError(f"{space!r} holds a str of at most {space.max_length} characters without surrogate "
                         f"code points; got a {type(values).__name__} that is not one")
    size = space.max_length + 1
    dest = np.frombuffer(shared_memory.get_obj(), dtype=np.int32)[index * size : (index + 1) * size]
    codes = np.frombuffer(values.encode("utf-32-le"), dtype=np.int32)
    dest[0] = len(codes)
    dest[1 : 1 + len(codes)] = codes


@_su.create_empty_array.register(UnicodeText)
def _empty(space: UnicodeText, n: int = 1, fn: Any = np.zeros) -> tuple[str, ...]:
    return tuple("" for _ in range(n))

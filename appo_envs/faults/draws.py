"""Counter-based random draws: the k-th draw of a stream is a pure function of its key.

A fault must be a pure function of (episode seed, tool, call index) so that forks,
replays and every member of a rollout group see the same fault at the same call. A
stateful generator cannot give that cheaply; hashing (key, stream, counter) can, in about
a microsecond per call.
"""
from __future__ import annotations

import hashlib
import struct

import numpy as np

_SCALE = 1.0 / 2**53
_WORDS = [struct.Struct(f"<{n}Q") for n in range(9)]


def stream_key(seed_seq: np.random.SeedSequence) -> bytes:
    """A 16-byte key derived from a SeedSequence (the per-purpose child of the episode seed)."""
    return np.asarray(seed_seq.generate_state(4, dtype=np.uint32)).tobytes()


def uniforms(key: bytes, stream: str, counter: int, n: int = 4) -> tuple[float, ...]:
    """``n`` (<= 8) independent uniforms in [0, 1) for draw ``counter`` of ``stream``."""
    digest = hashlib.blake2b(f"{stream}\x00{counter}".encode(), key=key, digest_size=8 * n).digest()
    return tuple([(w >> 11) * _SCALE for w in _WORDS[n].unpack(digest)])


class Draws:
    """``uniforms`` for one key with the keyed hash state prepared once (half the cost per draw)."""

    __slots__ = ("key", "_hashers")

    def __init__(self, key: bytes):
        self.key = key
        self._hashers = [hashlib.blake2b(key=key, digest_size=8 * n) if n else None for n in range(9)]

    def uniforms(self, stream: str, counter: int, n: int = 4) -> tuple[float, ...]:
        """Exactly ``uniforms(self.key, stream, counter, n)``."""
        h = self._hashers[n].copy()
        h.update(f"{stream}\x00{counter}".encode())
        return tuple([(w >> 11) * _SCALE for w in _WORDS[n].unpack(h.digest())])

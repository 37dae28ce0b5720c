"""Checks of the plain data in fault profiles, with messages that name the offending field's path.

Every message starts with the path of the field it is about (``bursts.p_exit must be ...``,
``error_kinds: unknown error kind(s) ...``); :func:`within` prefixes the path of the
enclosing object, so a bad value deep in a YAML profile is reported as
``tools.python.bursts.p_exit must be ...``.
"""
from __future__ import annotations

import math
import numbers
from contextlib import contextmanager
from typing import Any, Iterator


def check(ok: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``ok``."""
    if not ok:
        raise ValueError(message)


def is_number(value: Any) -> bool:
    """A real number that is not a bool (``True`` is an int, but as a rate or a delay it is a mistake)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_number(name: str, value: Any, low: float = 0.0, high: float = math.inf, *, low_open: bool = False,
                 high_open: bool = False, finite: bool = True) -> None:
    """Raise unless ``value`` is a number (finite unless ``finite=False``) between ``low`` and ``high``."""
    ok = is_number(value) and not math.isnan(value) and (math.isfinite(value) or not finite)
    ok = ok and (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
    if not ok:
        if high == math.inf:
            interval = f"{'>' if low_open else '>='} {low:g}"
        else:
            interval = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        # YAML reads 1e-3 (no dot) as a string: say how to write it.
        hint = " (YAML reads a number like 1e-3 as text: write 1.0e-3)" if isinstance(value, str) else ""
        raise ValueError(f"{name} must be a {'finite ' if finite else ''}number {interval}, got {value!r}{hint}")


@contextmanager
def within(where: str) -> Iterator[None]:
    """Prefix ``where`` to the field path of a ValueError raised inside (nothing when ``where`` is empty)."""
    try:
        yield
    except ValueError as e:
        if not where:
            raise
        raise ValueError(f"{where}.{e}") from None

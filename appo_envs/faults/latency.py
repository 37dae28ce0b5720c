"""Latency models: each turns uniforms into a delay in seconds (inverse-CDF, so draws are pure).

Models are plain data (``{"kind": "lognormal", "median_s": 0.2, "p99_s": 2.0}``) looked
up in :data:`LATENCY_MODELS`; add a model by registering a class with ``kind``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from statistics import NormalDist
from typing import Any, ClassVar

_STD_NORMAL = NormalDist()
_Z99 = _STD_NORMAL.inv_cdf(0.99)


def _clip_u(u: float) -> float:
    return min(max(u, 1e-12), 1.0 - 1e-12)


@dataclass(frozen=True)
class LatencyModel:
    """Base class; subclasses define ``kind``, their parameters and ``sample``."""

    kind: ClassVar[str] = ""

    def sample(self, u: float) -> float:
        raise NotImplementedError

    def scaled(self, factor: float) -> "LatencyModel":
        """The same shape with every delay multiplied by ``factor`` (intensity scaling); 0 is no delay."""
        if factor == 0:
            return Constant(0.0)
        return type(self)(**{f.name: getattr(self, f.name) * factor for f in fields(self)})

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class Constant(LatencyModel):
    kind: ClassVar[str] = "constant"
    value_s: float = 0.0

    def __post_init__(self) -> None:
        _check(self.value_s >= 0, "constant latency value_s must be >= 0")

    def sample(self, u: float) -> float:
        return self.value_s


@dataclass(frozen=True)
class Uniform(LatencyModel):
    kind: ClassVar[str] = "uniform"
    low_s: float = 0.0
    high_s: float = 0.0

    def __post_init__(self) -> None:
        _check(0 <= self.low_s <= self.high_s, "uniform latency needs 0 <= low_s <= high_s")

    def sample(self, u: float) -> float:
        return self.low_s + (self.high_s - self.low_s) * u


@dataclass(frozen=True)
class LogNormal(LatencyModel):
    """Log-normal given by its median and 99th percentile (how latency SLOs are stated)."""

    kind: ClassVar[str] = "lognormal"
    median_s: float = 0.1
    p99_s: float = 1.0

    def __post_init__(self) -> None:
        _check(0 < self.median_s <= self.p99_s, "lognormal latency needs 0 < median_s <= p99_s")

    def sample(self, u: float) -> float:
        sigma = math.log(self.p99_s / self.median_s) / _Z99
        return self.median_s * math.exp(sigma * _STD_NORMAL.inv_cdf(_clip_u(u)))


LATENCY_MODELS: dict[str, type[LatencyModel]] = {m.kind: m for m in (Constant, Uniform, LogNormal)}


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def latency_from_dict(spec: dict[str, Any] | LatencyModel | float | int) -> LatencyModel:
    """Build a model from plain data; a bare number means a constant delay in seconds."""
    if isinstance(spec, LatencyModel):
        return spec
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return Constant(float(spec))
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ValueError(f"latency must be a number or a mapping with 'kind' (one of {sorted(LATENCY_MODELS)}), got {spec!r}")
    params = dict(spec)
    kind = params.pop("kind")
    cls = LATENCY_MODELS.get(kind)
    if cls is None:
        raise ValueError(f"unknown latency kind {kind!r}; known: {sorted(LATENCY_MODELS)}")
    known = {f.name for f in fields(cls)}
    unknown = set(params) - known
    if unknown:
        raise ValueError(f"unknown parameter(s) {sorted(unknown)} for latency kind {kind!r}; expected {sorted(known)}")
    return cls(**{k: float(v) for k, v in params.items()})

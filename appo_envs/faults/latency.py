"""Latency models: each turns a uniform into a delay in seconds (inverse CDF, so draws are pure).

Models are plain data (``{"kind": "lognormal", "median_s": 0.2, "p99_s": 2.0}``) looked
up in :data:`LATENCY_MODELS`; add a model by registering a class with ``kind``. Because
``sample`` is the quantile function, ``model.sample(0.99)`` IS the model's p99, which is
also how the statistical tests state their tolerances.

Correlation between consecutive calls (:func:`correlated_uniform`) is a Gaussian copula:
the uniforms of calls 0..k drive an AR(1) chain of normal scores, so every model keeps its
exact marginal distribution (netem's "next = rho*last + (1-rho)*random" mixes uniforms
and distorts the distribution; this does not).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from statistics import NormalDist
from typing import Any, ClassVar

from appo_envs.faults.validation import check, check_number, is_number, within

_STD_NORMAL = NormalDist()
_Z99 = _STD_NORMAL.inv_cdf(0.99)
_NETEM_TABLE_MIN, _NETEM_TABLE_MAX = -4.0, 32767 / 8192  # netem stores the table as int16 / NETEM_DIST_SCALE


def _clip_u(u: float) -> float:
    return min(max(u, 1e-12), 1.0 - 1e-12)


@dataclass(frozen=True)
class LatencyModel:
    """Base class; subclasses define ``kind``, their parameters (seconds) and ``sample``."""

    kind: ClassVar[str] = ""

    def sample(self, u: float) -> float:
        """The delay at quantile ``u`` in [0, 1)."""
        raise NotImplementedError

    def scaled(self, factor: float) -> "LatencyModel":
        """The same shape with every delay multiplied by ``factor`` (intensity scaling); 0 is no delay."""
        if factor == 0:
            return Constant(0.0)
        return replace(self, **{f.name: getattr(self, f.name) * factor for f in fields(self) if f.name.endswith("_s")})

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class Constant(LatencyModel):
    """Always ``value_s``."""

    kind: ClassVar[str] = "constant"
    value_s: float = 0.0

    def __post_init__(self) -> None:
        check_number("value_s", self.value_s)

    def sample(self, u: float) -> float:
        return self.value_s


@dataclass(frozen=True)
class Uniform(LatencyModel):
    """Uniform on [low_s, high_s]."""

    kind: ClassVar[str] = "uniform"
    low_s: float = 0.0
    high_s: float = 0.0

    def __post_init__(self) -> None:
        check_number("low_s", self.low_s)
        check_number("high_s", self.high_s, self.low_s)

    def sample(self, u: float) -> float:
        return self.low_s + (self.high_s - self.low_s) * u


@dataclass(frozen=True)
class Normal(LatencyModel):
    """Normal with mean ``mean_s`` and standard deviation ``sd_s``, clipped at 0 (a delay is never negative)."""

    kind: ClassVar[str] = "normal"
    mean_s: float = 0.1
    sd_s: float = 0.01

    def __post_init__(self) -> None:
        check_number("mean_s", self.mean_s)
        check_number("sd_s", self.sd_s)

    def sample(self, u: float) -> float:
        return max(0.0, self.mean_s + self.sd_s * _STD_NORMAL.inv_cdf(_clip_u(u)))


@dataclass(frozen=True)
class LogNormal(LatencyModel):
    """Log-normal given by its median and 99th percentile (how latency SLOs are stated)."""

    kind: ClassVar[str] = "lognormal"
    median_s: float = 0.1
    p99_s: float = 1.0

    def __post_init__(self) -> None:
        check_number("median_s", self.median_s, 0, low_open=True)
        check_number("p99_s", self.p99_s, self.median_s)

    def sample(self, u: float) -> float:
        sigma = math.log(self.p99_s / self.median_s) / _Z99
        return self.median_s * math.exp(sigma * _STD_NORMAL.inv_cdf(_clip_u(u)))


@dataclass(frozen=True)
class Pareto(LatencyModel):
    """Pareto (type I): ``scale_s * (1 - u) ** (-1 / alpha)``; heavy tail, minimum ``scale_s``.

    Median ``scale_s * 2 ** (1/alpha)``, p99 ``scale_s * 100 ** (1/alpha)``; the mean is
    infinite for alpha <= 1, so ``max_s`` (default: none) can cap the tail.
    """

    kind: ClassVar[str] = "pareto"
    scale_s: float = 0.05
    alpha: float = 1.5
    max_s: float = math.inf

    def __post_init__(self) -> None:
        check_number("scale_s", self.scale_s, 0, low_open=True)
        check_number("alpha", self.alpha, 0, low_open=True)
        check_number("max_s", self.max_s, self.scale_s, finite=False)  # inf: no cap

    def sample(self, u: float) -> float:
        return min(self.max_s, self.scale_s * (1.0 - _clip_u(u)) ** (-1.0 / self.alpha))


@dataclass(frozen=True)
class ParetoNormal(LatencyModel):
    """netem's ``distribution paretonormal``: ``mu_s + sigma_s * t(u)``, clipped at 0.

    iproute2's table is the quantile-wise blend ``(z(u) + 3 * p(u)) / 4`` of a standard
    normal quantile ``z`` and a centred Pareto(alpha=3) quantile
    ``p(u) = (4/3) * ((1-u)^(-1/3) - 1.5)``, stored as int16 / 8192 (so ``t`` lies in
    [-4, 4)). This is the continuous form of that table: ``netem delay 100ms 20ms
    distribution paretonormal`` is ``{kind: paretonormal, mu_s: 0.1, sigma_s: 0.02}``.
    """

    kind: ClassVar[str] = "paretonormal"
    mu_s: float = 0.1
    sigma_s: float = 0.02

    def __post_init__(self) -> None:
        check_number("mu_s", self.mu_s)
        check_number("sigma_s", self.sigma_s)

    @staticmethod
    def table(u: float) -> float:
        """netem's paretonormal table value at quantile ``u`` (in units of sigma)."""
        u = _clip_u(u)
        t = _STD_NORMAL.inv_cdf(u) / 4 + ((1.0 - u) ** (-1.0 / 3.0) - 1.5)
        return min(max(t, _NETEM_TABLE_MIN), _NETEM_TABLE_MAX)

    def sample(self, u: float) -> float:
        return max(0.0, self.mu_s + self.sigma_s * self.table(u))


def load_latency_file(path: str | Path, unit: str = "s") -> tuple[float, ...]:
    """Measured latencies from a text file: one number per line (``#`` comments, blank lines skipped)."""
    factor = _UNITS.get(unit)
    check(factor is not None, f"unit must be one of {sorted(_UNITS)}, got {unit!r}")
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"path: cannot read the latency file {str(path)!r}: {e}") from None
    values = []
    for n, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            values.append(float(line.split(",")[0]) * factor)
        except ValueError:
            raise ValueError(f"path: {path}:{n}: expected one latency number per line, got {line!r}") from None
    return tuple(values)


_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


@dataclass(frozen=True)
class Empirical(LatencyModel):
    """The distribution of measured latencies: linear interpolation of their empirical quantile function.

    Give ``path`` (a file of one latency per line, in ``unit``: s, ms or us) or inline
    ``values_s``; ``scale`` multiplies every value (intensity scaling).
    """

    kind: ClassVar[str] = "empirical"
    path: str | None = None
    unit: str = "s"
    values_s: tuple[float, ...] = ()
    scale: float = 1.0
    _sorted: tuple[float, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check((self.path is None) != (not self.values_s), "values_s: give exactly one of path or values_s")
        check(isinstance(self.values_s, (list, tuple)), f"values_s must be a list of numbers, got {self.values_s!r}")
        for i, v in enumerate(self.values_s):
            check_number(f"values_s[{i}]", v)
        source = "values_s" if self.path is None else "path"
        values = load_latency_file(self.path, self.unit) if self.path is not None else tuple(map(float, self.values_s))
        check(len(values) >= 2, f"{source}: empirical latency needs at least 2 values, got {len(values)}")
        check(all(v >= 0 and math.isfinite(v) for v in values), f"{source}: empirical latencies must be finite and >= 0")
        check_number("scale", self.scale)
        object.__setattr__(self, "_sorted", tuple(sorted(values)))

    def sample(self, u: float) -> float:
        xs = self._sorted
        pos = u * (len(xs) - 1)
        i = min(int(pos), len(xs) - 2)
        return self.scale * (xs[i] + (xs[i + 1] - xs[i]) * (pos - i))

    def scaled(self, factor: float) -> LatencyModel:
        return Constant(0.0) if factor == 0 else replace(self, scale=self.scale * factor)

    def to_dict(self) -> dict[str, Any]:
        source: dict[str, Any] = {"path": self.path, "unit": self.unit} if self.path else {"values_s": list(self.values_s)}
        return {"kind": self.kind, **source, "scale": self.scale}


LATENCY_MODELS: dict[str, type[LatencyModel]] = {
    m.kind: m for m in (Constant, Uniform, Normal, LogNormal, Pareto, ParetoNormal, Empirical)
}

# Numbers become floats (the models' own checks reject anything else, bools and text included).
_PARAM_TYPES: dict[str, Any] = {"path": str, "unit": str,
                                "values_s": lambda v: tuple(map(_as_float, v)) if isinstance(v, (list, tuple)) else v}


def _as_float(v: Any) -> Any:
    return float(v) if is_number(v) else v


def latency_from_dict(spec: dict[str, Any] | LatencyModel | float | int) -> LatencyModel:
    """Build a model from plain data; a bare number means a constant delay in seconds."""
    if isinstance(spec, LatencyModel):
        return spec
    if is_number(spec):
        with within("latency"):
            return Constant(float(spec))
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ValueError(f"latency must be a number or a mapping with 'kind' (one of {sorted(LATENCY_MODELS)}), got {spec!r}")
    params = dict(spec)
    kind = params.pop("kind")
    cls = LATENCY_MODELS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"latency.kind: unknown latency kind {kind!r}; known: {sorted(LATENCY_MODELS)}")
    known = {f.name for f in fields(cls) if f.init}
    unknown = set(params) - known
    if unknown:
        raise ValueError(f"latency: unknown parameter(s) {sorted(unknown)} for latency kind {kind!r}; "
                         f"expected {sorted(known)}")
    with within("latency"):
        return cls(**{k: _PARAM_TYPES.get(k, _as_float)(v) for k, v in params.items()})


def correlated_uniform(z_prev: float | None, u: float, rho: float) -> tuple[float, float]:
    """Next step of the Gaussian-copula AR(1) chain: (uniform to sample with, normal score to carry).

    ``z_k = rho * z_{k-1} + sqrt(1 - rho^2) * Phi^-1(u_k)`` with ``z_0 = Phi^-1(u_0)``, so
    every ``z_k`` is standard normal and ``Phi(z_k)`` is exactly uniform.
    """
    eps = _STD_NORMAL.inv_cdf(_clip_u(u))
    z = eps if z_prev is None else rho * z_prev + math.sqrt(1.0 - rho * rho) * eps
    return _STD_NORMAL.cdf(z), z

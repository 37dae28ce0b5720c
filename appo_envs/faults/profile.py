"""Fault profiles: plain data saying which faults each tool suffers, and how often.

A profile is a frozen dataclass built from presets, dicts or YAML. ``tools`` holds
per-tool overrides, merged onto ``default`` (a dict override changes only the keys it
names). ``intensity`` in [0, 1] scales every rate monotonically (0 is clean), which is
what robustness sweeps vary.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from appo_envs.faults.corruption import CORRUPTIONS
from appo_envs.faults.errors import ERROR_KINDS, GilbertElliott, RateLimit
from appo_envs.faults.hostile import HOSTILE_TEMPLATES
from appo_envs.faults.latency import Constant, LatencyModel, LogNormal, ParetoNormal, latency_from_dict

PAIRINGS = ("shared", "fresh")
ATTRIBUTIONS = ("any", "terminal", "off")  # how info["infra_failure"] is decided; see appo_envs.faults.log


def _check_fraction(name: str, value: Any) -> None:
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def _reject_unknown(where: str, data: Mapping[str, Any], cls: type) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in {where}; allowed: {sorted(known)}")


def _check_weights(where: str, weights: Mapping[str, float], known: Mapping[str, Any]) -> None:
    unknown = set(weights) - set(known)
    if unknown:
        raise ValueError(f"unknown {where} {sorted(unknown)}; known: {sorted(known)}")
    if not weights or any(not isinstance(w, (int, float)) or w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"{where} must map names to non-negative weights with a positive sum, got {dict(weights)}")


def _weights(value: Any) -> dict[str, float]:
    """A list of names means equal weights."""
    return {k: 1.0 for k in value} if isinstance(value, (list, tuple)) else dict(value)


@dataclass(frozen=True)
class NetworkToxics:
    """Byte-level faults only the network fault proxy can apply (bandwidth cap, slicing)."""

    bandwidth_bytes_per_s: float = 0.0  # 0: unlimited
    slice_bytes: int = 0  # 0: no slicing; else forward in chunks of this size ...
    slice_delay_s: float = 0.0  # ... with this delay between chunks

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and v >= 0):
                raise ValueError(f"network.{f.name} must be a number >= 0, got {v!r}")

    def scaled(self, intensity: float) -> "NetworkToxics":
        if intensity == 0:
            return NetworkToxics()
        return NetworkToxics(self.bandwidth_bytes_per_s / intensity, self.slice_bytes, self.slice_delay_s * intensity)


@dataclass(frozen=True)
class ToolFaults:
    """Faults of one tool.

    Errors: ``error_rate`` (Bernoulli per call, kind drawn from ``error_kinds``), ``bursts``
    (Gilbert–Elliott outages), ``rate_limit`` (token bucket -> 429); a latency draw at or
    above ``timeout_s`` is a timeout too. Latency: ``latency`` plus optional correlation
    between consecutive calls. Content: ``corruption_rate`` (kind from ``corruption_kinds``)
    and ``hostile_rate`` (instruction from ``hostile_templates``). ``cold_start_s`` is what
    the first call after a sandbox death pays; ``retry_after_s`` is the Retry-After of a
    Bernoulli 429.
    """

    error_rate: float = 0.0
    error_kinds: Mapping[str, float] = field(default_factory=lambda: {"exception": 1.0})
    bursts: GilbertElliott | None = None
    rate_limit: RateLimit | None = None
    latency: LatencyModel = field(default_factory=Constant)
    latency_correlation: float = 0.0
    timeout_s: float = 10.0
    corruption_rate: float = 0.0
    corruption_kinds: Mapping[str, float] = field(default_factory=lambda: {k: 1.0 for k in CORRUPTIONS})
    hostile_rate: float = 0.0
    hostile_templates: Mapping[str, float] = field(default_factory=lambda: {k: 1.0 for k in HOSTILE_TEMPLATES})
    cold_start_s: float = 2.0
    retry_after_s: float = 1.0
    network: NetworkToxics = field(default_factory=NetworkToxics)

    def __post_init__(self) -> None:
        if not isinstance(self.latency, LatencyModel):  # a number (constant delay) or a model's plain data
            object.__setattr__(self, "latency", latency_from_dict(self.latency))
        for name in ("error_rate", "corruption_rate", "hostile_rate"):
            _check_fraction(name, getattr(self, name))
        _check_weights("error kind(s)", self.error_kinds, ERROR_KINDS)
        _check_weights("corruption kind(s)", self.corruption_kinds, CORRUPTIONS)
        _check_weights("hostile template(s)", self.hostile_templates, HOSTILE_TEMPLATES)
        if not (isinstance(self.latency_correlation, (int, float)) and 0 <= self.latency_correlation < 1):
            raise ValueError(f"latency_correlation must be in [0, 1), got {self.latency_correlation!r}")
        if not (isinstance(self.timeout_s, (int, float)) and self.timeout_s > 0):
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s!r}")
        for name in ("cold_start_s", "retry_after_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")

    def scaled(self, intensity: float) -> "ToolFaults":
        """Every rate times ``intensity``; delays scaled; the rate limit loosened (removed at 0)."""
        return replace(
            self,
            error_rate=self.error_rate * intensity,
            bursts=self.bursts.scaled(intensity) if self.bursts else None,
            rate_limit=self.rate_limit.scaled(intensity) if self.rate_limit else None,
            latency=self.latency.scaled(intensity),
            corruption_rate=self.corruption_rate * intensity,
            hostile_rate=self.hostile_rate * intensity,
            cold_start_s=self.cold_start_s * intensity,
            network=self.network.scaled(intensity),
        )

    @property
    def error_kinds_possible(self) -> frozenset[str]:
        """Every error kind this tool can see (Bernoulli kinds with weight, the burst kind, 429 from the limiter)."""
        kinds = {k for k, w in self.error_kinds.items() if w > 0} if self.error_rate > 0 else set()
        if self.bursts is not None and self.bursts.p_enter > 0 and self.bursts.error_in_bad > 0:
            kinds.add(self.bursts.kind)
        if self.rate_limit is not None:
            kinds.add("http_429")
        if self.latency.sample(1 - 1e-12) >= self.timeout_s:
            kinds.add("timeout")
        return frozenset(kinds)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "tool faults",
                  base: "ToolFaults | None" = None) -> "ToolFaults":
        """Build from plain data; keys not given keep their value in ``base`` (default: the defaults)."""
        _reject_unknown(where, data, cls)
        kw = dict(data)
        try:
            if "latency" in kw:
                kw["latency"] = latency_from_dict(kw["latency"])
            for name in ("error_kinds", "corruption_kinds", "hostile_templates"):
                if name in kw:
                    kw[name] = _weights(kw[name])
            for name, sub in (("bursts", GilbertElliott), ("rate_limit", RateLimit), ("network", NetworkToxics)):
                if kw.get(name) is not None and not isinstance(kw[name], sub):
                    _reject_unknown(f"{where}.{name}", kw[name], sub)
                    kw[name] = sub(**kw[name])
            return replace(base, **kw) if base is not None else cls(**kw)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, LatencyModel):
                v = v.to_dict()
            elif isinstance(v, (GilbertElliott, RateLimit, NetworkToxics)):
                v = {g.name: getattr(v, g.name) for g in fields(v)}
            elif isinstance(v, Mapping):
                v = dict(v)
            out[f.name] = v
        return out


@dataclass(frozen=True)
class Patience:
    """The user's patience: a per-turn abort hazard that grows while the user waits.

    After every turn that does not end the episode, the user aborts with probability
    ``1 - exp(-(base_hazard + per_second * waited_s + per_turn * turns))``, where
    ``waited_s`` is env-clock time since the last answer-bearing turn (a turn with an
    ``<answer>``; the episode start counts as one) and ``turns`` counts turns since then.
    """

    base_hazard: float = 0.0
    per_second: float = 0.0
    per_turn: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and v >= 0):
                raise ValueError(f"patience.{f.name} must be a number >= 0, got {v!r}")

    def abort_probability(self, waited_s: float, turns: int) -> float:
        """P(abort at this turn) = 1 - exp(-hazard)."""
        return 1.0 - math.exp(-(self.base_hazard + self.per_second * waited_s + self.per_turn * turns))

    def scaled(self, intensity: float) -> "Patience":
        return Patience(*(getattr(self, f.name) * intensity for f in fields(self)))

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) > 0 for f in fields(self))


@dataclass(frozen=True)
class FaultProfile:
    """Which faults the tools of an env suffer. ``tools`` overrides ``default`` per tool name.

    ``hostile_penalty`` is subtracted from the reward of the step in which the agent obeys
    an injected instruction (once per injection). ``attribution`` picks the rule that sets
    ``info["infra_failure"]`` (see :data:`appo_envs.faults.log.ATTRIBUTION_RULES`).
    """

    name: str = "custom"
    default: ToolFaults = field(default_factory=ToolFaults)
    tools: Mapping[str, ToolFaults] = field(default_factory=dict)
    patience: Patience = field(default_factory=Patience)
    intensity: float = 1.0
    real_time: bool = False  # sleep for injected delays instead of only charging the virtual clock
    pairing: str = "shared"  # "shared": same faults across a rollout group and its forks; "fresh": independent
    hostile_penalty: float = 1.0
    attribution: str = "any"
    _effective: dict[str, ToolFaults] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_fraction("intensity", self.intensity)
        if self.pairing not in PAIRINGS:
            raise ValueError(f"pairing must be one of {PAIRINGS}, got {self.pairing!r}")
        if self.attribution not in ATTRIBUTIONS:
            raise ValueError(f"attribution must be one of {ATTRIBUTIONS}, got {self.attribution!r}")
        if not (isinstance(self.hostile_penalty, (int, float)) and self.hostile_penalty >= 0):
            raise ValueError(f"hostile_penalty must be a number >= 0, got {self.hostile_penalty!r}")
        if not isinstance(self.real_time, bool):
            raise ValueError(f"real_time must be true or false, got {self.real_time!r}")

    def for_tool(self, tool: str) -> ToolFaults:
        """Effective faults of ``tool`` with intensity applied (computed once per profile and tool)."""
        spec = self._effective.get(tool)
        if spec is None:
            spec = self._effective[tool] = self.tools.get(tool, self.default).scaled(self.intensity)
        return spec

    @property
    def effective_patience(self) -> Patience:
        return self.patience.scaled(self.intensity)

    def with_intensity(self, intensity: float) -> "FaultProfile":
        return replace(self, intensity=intensity)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FaultProfile":
        """Build from plain data; ``base: <preset>`` starts from a preset and overrides it.

        ``tools.<name>`` entries override only the keys they give, on top of the resolved ``default``.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a fault profile must be a mapping, got {type(data).__name__}")
        allowed = {f.name for f in fields(cls) if f.init} | {"base"}
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"unknown key(s) {sorted(unknown)} in fault profile; allowed: {sorted(allowed)}")
        kw = dict(data)
        start = preset(kw.pop("base")) if "base" in kw else cls()
        if "default" in kw:
            kw["default"] = ToolFaults.from_dict(kw["default"], "default", base=start.default)
        default = kw.get("default", start.default)
        if "tools" in kw:
            if not isinstance(kw["tools"], Mapping):
                raise ValueError("tools must map tool names to tool fault overrides")
            kw["tools"] = {**start.tools, **{t: v if isinstance(v, ToolFaults) else
                                             ToolFaults.from_dict(v, f"tools.{t}", base=start.tools.get(t, default))
                                             for t, v in kw["tools"].items()}}
        if "patience" in kw and not isinstance(kw["patience"], Patience):
            _reject_unknown("patience", kw["patience"], Patience)
            kw["patience"] = Patience(**kw["patience"])
        return replace(start, **kw)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "FaultProfile":
        from appo_envs.yaml_file import load_yaml_mapping

        return cls.from_dict({"name": Path(path).stem, **load_yaml_mapping(path, "fault profile file")})

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "default": self.default.to_dict(),
                "tools": {k: v.to_dict() for k, v in self.tools.items()},
                "patience": {f.name: getattr(self.patience, f.name) for f in fields(Patience)},
                "intensity": self.intensity, "real_time": self.real_time, "pairing": self.pairing,
                "hostile_penalty": self.hostile_penalty, "attribution": self.attribution}


_FLAKY = ToolFaults(error_rate=0.15, error_kinds={"exception": 0.7, "timeout": 0.3},
                    latency=LogNormal(median_s=0.2, p99_s=2.0))
_CHAOS = ToolFaults(
    error_rate=0.15,
    error_kinds={"exception": 1, "timeout": 1, "http_5xx": 1, "http_429": 1, "connection_reset": 1, "truncated_body": 1},
    bursts=GilbertElliott(p_enter=0.05, p_exit=0.3),
    rate_limit=RateLimit(rate_per_s=1.0, burst=5),
    latency=ParetoNormal(mu_s=0.5, sigma_s=0.4),
    latency_correlation=0.5,
    corruption_rate=0.15,
    hostile_rate=0.1,
    timeout_s=10.0,
)

PRESETS: dict[str, FaultProfile] = {
    "clean": FaultProfile(name="clean"),
    "flaky": FaultProfile(name="flaky", default=_FLAKY),
    "degraded": FaultProfile(
        name="degraded",
        default=ToolFaults(error_rate=0.35, error_kinds={"exception": 0.5, "timeout": 0.5},
                           latency=LogNormal(median_s=1.0, p99_s=15.0), timeout_s=30.0),
        patience=Patience(base_hazard=0.0, per_second=0.002, per_turn=0.02),
    ),
    "hostile": FaultProfile(name="hostile", default=ToolFaults(hostile_rate=0.3)),
    "impatient": FaultProfile(
        name="impatient",
        default=ToolFaults(latency=LogNormal(median_s=2.0, p99_s=20.0), timeout_s=30.0),
        patience=Patience(base_hazard=0.02, per_second=0.01, per_turn=0.05),
    ),
    "chaos": FaultProfile(
        name="chaos",
        default=_CHAOS,
        # Only sandboxed tools can lose their worker; the python tool also gets sandbox deaths.
        tools={"python": replace(_CHAOS, error_kinds={**_CHAOS.error_kinds, "sandbox_death": 1})},
        patience=Patience(base_hazard=0.01, per_second=0.002, per_turn=0.02),
    ),
}


def preset(name: str) -> FaultProfile:
    """A preset profile by name."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown fault profile {name!r}; presets: {sorted(PRESETS)} "
                         "(or pass a dict, a FaultProfile, or a path to a .yaml file)") from None


def resolve_profile(spec: str | Mapping[str, Any] | FaultProfile | Path | None,
                    intensity: float | None = None) -> FaultProfile:
    """Turn what a user passes as ``faults=`` into a profile, optionally overriding intensity."""
    if spec is None:
        profile = PRESETS["clean"]
    elif isinstance(spec, FaultProfile):
        profile = spec
    elif isinstance(spec, Mapping):
        profile = FaultProfile.from_dict(spec)
    elif isinstance(spec, Path) or (isinstance(spec, str) and spec.endswith((".yaml", ".yml"))):
        profile = FaultProfile.from_yaml(spec)
    elif isinstance(spec, str):
        profile = preset(spec)
    else:
        raise ValueError(f"faults must be a preset name, dict, FaultProfile or YAML path, got {type(spec).__name__}")
    return profile if intensity is None else profile.with_intensity(intensity)

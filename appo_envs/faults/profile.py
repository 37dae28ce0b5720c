"""Fault profiles: plain data saying which faults each tool suffers, and how often.

A profile is a frozen dataclass built from presets, dicts or YAML. ``intensity`` in [0, 1]
scales every rate and delay (0 is clean), which is what robustness sweeps vary.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from appo_envs.faults.latency import Constant, LatencyModel, LogNormal, latency_from_dict

# How an injected error shows itself on a generic tool: (status word, message to the agent).
# HTTP tools render errors as real HTTP behaviour instead (see the HTTP transport).
ERROR_KINDS: dict[str, tuple[str, str]] = {
    "exception": ("error", "ToolError: the tool backend failed with an internal error (transient); you may retry."),
    "timeout": ("timeout", "ToolTimeout: no response from the tool within {timeout_s:g} s; you may retry."),
    "http_5xx": ("error", "HTTP 503 Service Unavailable: the service is temporarily unavailable; you may retry."),
    "http_429": ("error", "HTTP 429 Too Many Requests: rate limited; retry after a pause."),
    "connection_reset": ("error", "ConnectionResetError: the connection was reset by the peer; you may retry."),
    "truncated_body": ("error", "IncompleteRead: the response body ended early; you may retry."),
}
PAIRINGS = ("shared", "fresh")


def _check_fraction(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def _reject_unknown(where: str, data: Mapping[str, Any], cls: type) -> None:
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in {where}; allowed: {sorted(known)}")


@dataclass(frozen=True)
class ToolFaults:
    """Faults of one tool: error rate and mix, added latency, and the clock cost of a timeout."""

    error_rate: float = 0.0
    error_kinds: Mapping[str, float] = field(default_factory=lambda: {"exception": 1.0})
    latency: LatencyModel = field(default_factory=Constant)
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        _check_fraction("error_rate", self.error_rate)
        unknown = set(self.error_kinds) - set(ERROR_KINDS)
        if unknown:
            raise ValueError(f"unknown error kind(s) {sorted(unknown)}; known: {sorted(ERROR_KINDS)}")
        if not self.error_kinds or any(w < 0 for w in self.error_kinds.values()) or sum(self.error_kinds.values()) <= 0:
            raise ValueError(f"error_kinds must map kinds to non-negative weights with a positive sum, got {dict(self.error_kinds)}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s!r}")

    def scaled(self, intensity: float) -> "ToolFaults":
        return replace(self, error_rate=self.error_rate * intensity, latency=self.latency.scaled(intensity))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "tool faults") -> "ToolFaults":
        _reject_unknown(where, data, cls)
        kw = dict(data)
        if "latency" in kw:
            kw["latency"] = latency_from_dict(kw["latency"])
        if "error_kinds" in kw:
            ek = kw["error_kinds"]
            kw["error_kinds"] = {k: 1.0 for k in ek} if isinstance(ek, (list, tuple)) else dict(ek)
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return {"error_rate": self.error_rate, "error_kinds": dict(self.error_kinds),
                "latency": self.latency.to_dict(), "timeout_s": self.timeout_s}


@dataclass(frozen=True)
class Patience:
    """The user's patience: per-turn abort hazard growing with waiting time and turn count."""

    base_hazard: float = 0.0  # hazard of a turn at t = 0
    per_second: float = 0.0  # added per env-clock second since the last answer-bearing turn
    per_turn: float = 0.0  # added per turn taken

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not (isinstance(v, (int, float)) and v >= 0):
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
    """Which faults the tools of an env suffer. ``tools`` overrides ``default`` per tool name."""

    name: str = "custom"
    default: ToolFaults = field(default_factory=ToolFaults)
    tools: Mapping[str, ToolFaults] = field(default_factory=dict)
    patience: Patience = field(default_factory=Patience)
    intensity: float = 1.0
    real_time: bool = False  # sleep for injected latency instead of charging the virtual clock
    pairing: str = "shared"  # "shared": same faults across a rollout group; "fresh": independent

    def __post_init__(self) -> None:
        _check_fraction("intensity", self.intensity)
        if self.pairing not in PAIRINGS:
            raise ValueError(f"pairing must be one of {PAIRINGS}, got {self.pairing!r}")

    def for_tool(self, tool: str) -> ToolFaults:
        """Effective faults of ``tool`` with intensity applied."""
        return self.tools.get(tool, self.default).scaled(self.intensity)

    @property
    def effective_patience(self) -> Patience:
        return self.patience.scaled(self.intensity)

    def with_intensity(self, intensity: float) -> "FaultProfile":
        return replace(self, intensity=intensity)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FaultProfile":
        """Build from plain data; ``base: <preset>`` starts from a preset and overrides it."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a fault profile must be a mapping, got {type(data).__name__}")
        allowed = {f.name for f in fields(cls)} | {"base"}
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"unknown key(s) {sorted(unknown)} in fault profile; allowed: {sorted(allowed)}")
        kw = dict(data)
        start = preset(kw.pop("base")) if "base" in kw else cls()
        if "default" in kw:
            kw["default"] = ToolFaults.from_dict(kw["default"], "default")
        if "tools" in kw:
            kw["tools"] = {**start.tools, **{t: ToolFaults.from_dict(v, f"tools.{t}") for t, v in kw["tools"].items()}}
        if "patience" in kw:
            _reject_unknown("patience", kw["patience"], Patience)
            kw["patience"] = Patience(**kw["patience"])
        return replace(start, **kw)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "FaultProfile":
        import yaml

        data = yaml.safe_load(Path(path).read_text())
        return cls.from_dict({"name": Path(path).stem, **(data or {})})

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "default": self.default.to_dict(),
                "tools": {k: v.to_dict() for k, v in self.tools.items()},
                "patience": {f.name: getattr(self.patience, f.name) for f in fields(Patience)},
                "intensity": self.intensity, "real_time": self.real_time, "pairing": self.pairing}


PRESETS: dict[str, FaultProfile] = {
    "clean": FaultProfile(name="clean"),
    "flaky": FaultProfile(
        name="flaky",
        default=ToolFaults(error_rate=0.15, error_kinds={"exception": 0.7, "timeout": 0.3},
                           latency=LogNormal(median_s=0.2, p99_s=2.0)),
    ),
    "degraded": FaultProfile(
        name="degraded",
        default=ToolFaults(error_rate=0.35, error_kinds={"exception": 0.5, "timeout": 0.5},
                           latency=LogNormal(median_s=1.0, p99_s=15.0), timeout_s=30.0),
        patience=Patience(base_hazard=0.0, per_second=0.002, per_turn=0.02),
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

"""Fault profiles: plain data saying which faults each tool suffers, and how often.

A profile is a frozen dataclass built from presets, dicts or YAML. ``tools`` holds per-tool
entries: partial overrides (the fields they set) applied on top of the final ``default``, so a
default overridden on top of a preset reaches every tool except in the fields a tool's entry
sets. ``intensity`` in [0, 1] scales every rate monotonically (0 is clean), which is what
robustness sweeps vary.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from appo_envs.faults.corruption import CORRUPTIONS
from appo_envs.faults.errors import ERROR_KINDS, GilbertElliott, RateLimit
from appo_envs.faults.hostile import HOSTILE_TEMPLATES
from appo_envs.faults.latency import Constant, LatencyModel, LogNormal, ParetoNormal, latency_from_dict
from appo_envs.faults.validation import check, check_number, within

PAIRINGS = ("shared", "fresh")
ATTRIBUTIONS = ("any", "terminal", "off")  # how info["infra_failure"] is decided; see appo_envs.faults.log


def _reject_unknown(where: str, data: Any, cls: type) -> None:
    """Plain data for ``cls`` must be a mapping of its field names (``where`` names it in the message)."""
    check(isinstance(data, Mapping), f"{where} must be a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(cls) if f.init}
    unknown = set(data) - known
    check(not unknown, f"{where}: unknown key(s) {sorted(unknown, key=str)}; allowed: {sorted(known)}")


# weighted-choice field -> (what its names are, the names it may use)
_WEIGHTED: dict[str, tuple[str, Mapping[str, Any]]] = {
    "error_kinds": ("error kind", ERROR_KINDS),
    "corruption_kinds": ("corruption kind", CORRUPTIONS),
    "hostile_templates": ("hostile template", HOSTILE_TEMPLATES),
}


def _check_weights(name: str, weights: Any) -> None:
    """Known names with finite weights >= 0, at least one of them positive (a choice needs something to pick)."""
    what, known = _WEIGHTED[name]
    check(isinstance(weights, Mapping), f"{name} must map {what}s to weights, got {weights!r}")
    unknown = set(weights) - set(known)
    check(not unknown, f"{name}: unknown {what}(s) {sorted(unknown, key=str)}; known: {sorted(known)}")
    for key, weight in weights.items():
        check_number(f"{name}.{key}", weight)
    check(sum(weights.values()) > 0, f"{name} needs at least one positive weight, got {dict(weights)}")


def _weights(name: str, value: Any) -> dict[str, float]:
    """A list of names means equal weights; a mapping gives each name its weight."""
    if isinstance(value, (list, tuple)):
        return {k: 1.0 for k in value}
    check(isinstance(value, Mapping), f"{name} must be a list of names or a mapping of name to weight, got {value!r}")
    return dict(value)


@dataclass(frozen=True)
class NetworkToxics:
    """Byte-level faults only the network fault proxy can apply (bandwidth cap, slicing)."""

    bandwidth_bytes_per_s: float = 0.0  # 0: unlimited
    slice_bytes: int = 0  # 0: no slicing; else forward in chunks of this size ...
    slice_delay_s: float = 0.0  # ... with this delay between chunks

    def __post_init__(self) -> None:
        for f in fields(self):
            check_number(f"network.{f.name}", getattr(self, f.name))

    def scaled(self, intensity: float) -> "NetworkToxics":
        if intensity == 0:
            return NetworkToxics()
        return NetworkToxics(self.bandwidth_bytes_per_s / intensity, self.slice_bytes, self.slice_delay_s * intensity)


_RECORDS: dict[str, type] = {"bursts": GilbertElliott, "rate_limit": RateLimit, "network": NetworkToxics}


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
            check_number(name, getattr(self, name), 0, 1)
        for name in _WEIGHTED:
            _check_weights(name, getattr(self, name))
        check_number("latency_correlation", self.latency_correlation, 0, 1, high_open=True)
        check_number("timeout_s", self.timeout_s, 0, low_open=True)
        check_number("cold_start_s", self.cold_start_s)
        check_number("retry_after_s", self.retry_after_s)
        for name, record in _RECORDS.items():
            value = getattr(self, name)
            check(isinstance(value, record) or (value is None and name != "network"),
                  f"{name} must be a {record.__name__}, got {value!r}")

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
    def from_dict(cls, data: Mapping[str, Any], where: str = "", base: "ToolFaults | None" = None) -> "ToolFaults":
        """Build from plain data; keys not given keep their value in ``base`` (default: the defaults).

        ``where`` is the data's path in the profile (``default``), prefixed to error messages.
        """
        overrides = tool_overrides(data, where)
        with within(where):
            return replace(base, **overrides) if base is not None else cls(**overrides)

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain data (``from_dict`` reads it back)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def _plain(value: Any) -> Any:
    """A ToolFaults field value as plain data (what YAML holds)."""
    if isinstance(value, LatencyModel):
        return value.to_dict()
    if isinstance(value, tuple(_RECORDS.values())):
        return {f.name: getattr(value, f.name) for f in fields(value)}
    return dict(value) if isinstance(value, Mapping) else value


def _parse_field(name: str, value: Any) -> Any:
    """One ToolFaults field from plain data; typed values pass through (the ToolFaults checks them)."""
    if name == "latency":
        return latency_from_dict(value)
    if name in _WEIGHTED:
        return _weights(name, value)
    record = _RECORDS.get(name)
    if record is not None and value is not None and not isinstance(value, record):
        _reject_unknown(name, value, record)
        return record(**value)
    return value


def tool_overrides(entry: Mapping[str, Any] | ToolFaults, where: str = "") -> dict[str, Any]:
    """The fields a per-tool entry sets, as typed values: a mapping sets the keys it gives, a ToolFaults every field."""
    if isinstance(entry, ToolFaults):
        return {f.name: getattr(entry, f.name) for f in fields(entry)}
    _reject_unknown(where or "tool faults", entry, ToolFaults)
    with within(where):
        return {name: _parse_field(name, value) for name, value in entry.items()}


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
            check_number(f"patience.{f.name}", getattr(self, f.name))

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
    """Which faults the tools of an env suffer: ``default``, with ``tools[name]`` overriding the fields it sets.

    A ``tools`` entry is a mapping of the ToolFaults fields it sets (plain data or typed
    values) or a whole ToolFaults (which sets every field); it is stored as the mapping.

    ``hostile_penalty`` is subtracted from the reward of the step in which the agent obeys
    an injected instruction (once per injection). ``attribution`` picks the rule that sets
    ``info["infra_failure"]`` (see :data:`appo_envs.faults.log.ATTRIBUTION_RULES`).
    """

    name: str = "custom"
    default: ToolFaults = field(default_factory=ToolFaults)
    tools: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # tool -> the fields its entry sets
    patience: Patience = field(default_factory=Patience)
    intensity: float = 1.0
    real_time: bool = False  # sleep for injected delays instead of only charging the virtual clock
    pairing: str = "shared"  # "shared": same faults across a rollout group and its forks; "fresh": independent
    hostile_penalty: float = 1.0
    attribution: str = "any"
    _effective: dict[str, ToolFaults] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check(isinstance(self.name, str), f"name must be a string, got {self.name!r}")
        check(isinstance(self.default, ToolFaults), f"default must be a ToolFaults, got {type(self.default).__name__}")
        check(isinstance(self.patience, Patience), f"patience must be a Patience, got {type(self.patience).__name__}")
        check_number("intensity", self.intensity, 0, 1)
        check(self.pairing in PAIRINGS, f"pairing must be one of {PAIRINGS}, got {self.pairing!r}")
        check(self.attribution in ATTRIBUTIONS, f"attribution must be one of {ATTRIBUTIONS}, got {self.attribution!r}")
        check_number("hostile_penalty", self.hostile_penalty)
        check(isinstance(self.real_time, bool), f"real_time must be true or false, got {self.real_time!r}")
        check(isinstance(self.tools, Mapping), "tools must map tool names to tool fault overrides")
        entries = {}
        for tool, entry in self.tools.items():
            check(isinstance(tool, str), f"tools: a tool name must be a string, got {tool!r}")
            entries[tool] = tool_overrides(entry, f"tools.{tool}")
            with within(f"tools.{tool}"):  # the entry must give valid faults on top of the default
                replace(self.default, **entries[tool])
        object.__setattr__(self, "tools", entries)

    def tool_faults(self, tool: str) -> ToolFaults:
        """Faults of ``tool`` before intensity: ``default`` with the fields its entry sets replaced."""
        entry = self.tools.get(tool)
        return replace(self.default, **entry) if entry else self.default

    def for_tool(self, tool: str) -> ToolFaults:
        """Effective faults of ``tool`` with intensity applied (computed once per profile and tool)."""
        spec = self._effective.get(tool)
        if spec is None:
            spec = self._effective[tool] = self.tool_faults(tool).scaled(self.intensity)
        return spec

    def check_tools(self, env_tools: Iterable[str]) -> None:
        """Refuse an entry whose tool the env lacks but whose name looks like a misspelling of one it has.

        Misspelt means a difflib similarity >= 0.65 of the lower-cased name to a tool's: one
        wrong, missing, extra or swapped letter in a name of three or more. Other entries for
        tools the env lacks are kept and unused: one profile can serve a sweep over envs with
        different tools (chaos names python).
        """
        have = list(env_tools)
        for tool in self.tools:
            near = difflib.get_close_matches(tool.lower(), have, n=1, cutoff=0.65) if tool not in have else []
            if near:
                raise ValueError(f"fault profile {self.name!r} has faults for tool {tool!r}, which this env does not "
                                 f"have; did you mean {near[0]!r}? (the env's tools: {', '.join(have)})")

    @property
    def effective_patience(self) -> Patience:
        return self.patience.scaled(self.intensity)

    def with_intensity(self, intensity: float) -> "FaultProfile":
        return replace(self, intensity=intensity)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FaultProfile":
        """Build from plain data; ``base: <preset>`` starts from a preset and overrides it.

        ``default`` overrides the keys it gives in the preset's default; a ``tools.<name>`` entry
        adds the keys it gives to the preset's entry for that tool (both apply on top of the final default).
        """
        check(isinstance(data, Mapping), f"a fault profile must be a mapping, got {type(data).__name__}")
        allowed = {f.name for f in fields(cls) if f.init} | {"base"}
        unknown = set(data) - allowed
        check(not unknown, f"unknown key(s) {sorted(unknown, key=str)} in fault profile; allowed: {sorted(allowed)}")
        kw = dict(data)
        start = preset(kw.pop("base")) if "base" in kw else cls()
        if "default" in kw:
            kw["default"] = ToolFaults.from_dict(kw["default"], "default", base=start.default)
        if "tools" in kw:
            check(isinstance(kw["tools"], Mapping), "tools must map tool names to tool fault overrides")
            kw["tools"] = {**start.tools, **{t: {**start.tools.get(t, {}), **tool_overrides(v, f"tools.{t}")}
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
                "tools": {t: {k: _plain(v) for k, v in entry.items()} for t, entry in self.tools.items()},
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
        tools={"python": {"error_kinds": {**_CHAOS.error_kinds, "sandbox_death": 1}}},
        patience=Patience(base_hazard=0.01, per_second=0.002, per_turn=0.02),
    ),
}


def preset(name: str) -> FaultProfile:
    """A preset profile by name."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):  # TypeError: an unhashable name (a list from YAML)
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

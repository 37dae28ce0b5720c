"""Seeded, replayable fault injection for tool calls and user behaviour.

Profiles (:mod:`.profile`) say what can go wrong; the injector (:mod:`.injector`) decides
what does, as a pure function of (episode key, tool, call index); :mod:`.apply` makes it
happen to a call; :mod:`.log` records it and attributes failures. Models live in
:mod:`.latency`, :mod:`.errors`, :mod:`.corruption` and :mod:`.hostile`.
"""
from appo_envs.faults.corruption import CORRUPTIONS, Corrupted, CorruptionContext, corrupt
from appo_envs.faults.errors import ERROR_KINDS, GilbertElliott, RateLimit, TokenBucket, render_error
from appo_envs.faults.hostile import HOSTILE_TEMPLATES, Injection, inject, obeyed_canaries
from appo_envs.faults.injector import CallFault, FaultInjector
from appo_envs.faults.latency import (
    LATENCY_MODELS,
    Constant,
    Empirical,
    LatencyModel,
    LogNormal,
    Normal,
    Pareto,
    ParetoNormal,
    Uniform,
    latency_from_dict,
)
from appo_envs.faults.log import ATTRIBUTION_RULES, FAULT_CATEGORIES, FaultLog, Outcome, infra_failure
from appo_envs.faults.profile import (
    PRESETS,
    FaultProfile,
    NetworkToxics,
    Patience,
    ToolFaults,
    preset,
    resolve_profile,
)

__all__ = [
    "ATTRIBUTION_RULES", "CORRUPTIONS", "CallFault", "Constant", "Corrupted", "CorruptionContext", "ERROR_KINDS",
    "Empirical", "FAULT_CATEGORIES", "FaultInjector", "FaultLog", "FaultProfile", "GilbertElliott", "HOSTILE_TEMPLATES",
    "Injection", "LATENCY_MODELS", "LatencyModel", "LogNormal", "NetworkToxics", "Normal", "Outcome", "PRESETS",
    "Pareto", "ParetoNormal", "Patience", "RateLimit", "TokenBucket", "ToolFaults", "Uniform", "corrupt",
    "infra_failure", "inject", "latency_from_dict", "obeyed_canaries", "preset", "render_error", "resolve_profile",
]

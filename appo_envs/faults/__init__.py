"""Seeded, replayable fault injection for tool calls and user behaviour."""
from appo_envs.faults.injector import CallFault, FaultInjector
from appo_envs.faults.latency import LATENCY_MODELS, Constant, LatencyModel, LogNormal, Uniform, latency_from_dict
from appo_envs.faults.profile import (
    ERROR_KINDS,
    PRESETS,
    FaultProfile,
    Patience,
    ToolFaults,
    preset,
    resolve_profile,
)

__all__ = [
    "CallFault", "Constant", "ERROR_KINDS", "FaultInjector", "FaultProfile", "LATENCY_MODELS", "LatencyModel",
    "LogNormal", "PRESETS", "Patience", "ToolFaults", "Uniform", "latency_from_dict", "preset", "resolve_profile",
]

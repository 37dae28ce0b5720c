"""Decide the fault of every tool call and every user turn from an episode's fault key.

``for_call(tool, k)`` is a pure function of (key, tool, k): forks, replays and the members
of a rollout group that share a seed get identical faults at identical calls.
"""
from __future__ import annotations

from dataclasses import dataclass

from appo_envs.faults.draws import uniforms
from appo_envs.faults.profile import FaultProfile, ToolFaults


@dataclass(frozen=True)
class CallFault:
    """The fault decided for one call: an error kind (or None) and added latency."""

    error: str | None
    latency_s: float


class FaultInjector:
    """Pure fault decisions for one episode; cheap to copy (it holds only immutable data)."""

    def __init__(self, profile: FaultProfile, key: bytes, user_key: bytes):
        self.profile = profile
        self.key = key
        self.user_key = user_key
        self._per_tool: dict[str, ToolFaults] = {}
        self._patience = profile.effective_patience

    def _tool(self, tool: str) -> ToolFaults:
        spec = self._per_tool.get(tool)
        if spec is None:
            spec = self._per_tool[tool] = self.profile.for_tool(tool)
        return spec

    def for_call(self, tool: str, k: int) -> CallFault:
        spec = self._tool(tool)
        u_err, u_kind, u_lat, _ = uniforms(self.key, "call:" + tool, k)
        error = None
        if u_err < spec.error_rate:
            total = sum(spec.error_kinds.values())
            acc = 0.0
            for kind, weight in spec.error_kinds.items():
                acc += weight / total
                if u_kind < acc:
                    error = kind
                    break
            else:
                error = kind
        return CallFault(error=error, latency_s=spec.latency.sample(u_lat))

    def timeout_s(self, tool: str) -> float:
        return self._tool(tool).timeout_s

    def user_aborts(self, turn: int, waited_s: float) -> tuple[bool, float]:
        """Whether the user aborts after ``turn`` turns, having waited ``waited_s``; and the probability."""
        if not self._patience.active:
            return False, 0.0
        p = self._patience.abort_probability(waited_s, turn)
        return uniforms(self.user_key, "user", turn, n=1)[0] < p, p

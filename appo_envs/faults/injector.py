"""Decide the fault of every tool call and every user turn from an episode's fault key.

``for_call(tool, k)`` is a pure function of (key, tool, k). The stateful models (the
Gilbert–Elliott chain, correlated latency, the cold start after a sandbox death) are
functions of the draws of calls 0..k of that tool, computed in order once and memoised,
so forks, replays and the members of a rollout group that share a key agree exactly. A fork
that draws fresh faults keeps its parent's realised history (:meth:`FaultInjector.inherit_history`):
only the calls after the fork are drawn from its own key.
The one decision that also depends on what the agent does — the token-bucket rate limit,
which depends on when calls arrive on the env clock — is made by the env from its
episode state (see :class:`appo_envs.faults.errors.TokenBucket`).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Mapping

from appo_envs.faults.draws import Draws
from appo_envs.faults.hostile import Injection, make_injection
from appo_envs.faults.latency import correlated_uniform
from appo_envs.faults.profile import FaultProfile, ToolFaults


@dataclass(frozen=True, slots=True)
class CallFault:
    """The fault decided for one call. Only ``error`` and ``latency_s`` are needed by simple tools.

    An HTTP transport renders ``error`` as real HTTP behaviour and uses ``retry_after_s``
    for a 429's ``Retry-After`` header; the other fields are applied by the env.
    """

    error: str | None
    latency_s: float
    source: str | None = None  # what decided the error: "bernoulli", "burst", "latency" or "rate_limit"
    retry_after_s: float | None = None
    corruption: str | None = None  # a kind of appo_envs.faults.corruption.CORRUPTIONS
    corruption_u: float = 0.0
    hostile: Injection | None = None
    hostile_u: float = 0.0  # where in the output the instruction is planted
    cold_start_s: float = 0.0  # the previous call of this tool killed its sandbox


def _pick(weights: dict[str, float], u: float) -> str:
    total = sum(weights.values())
    acc, name = 0.0, ""
    for name, weight in weights.items():
        acc += weight / total
        if u < acc:
            break
    return name


class FaultInjector:
    """Pure fault decisions for one episode; forks may share it, also across threads (its memo holds
    only pure values, and is filled under a lock so concurrent forks cannot append a call twice)."""

    def __init__(self, profile: FaultProfile, key: bytes, user_key: bytes):
        self.profile = profile
        self.key = key
        self.user_key = user_key
        self._draws, self._user_draws = Draws(key), Draws(user_key)
        self._per_tool: dict[str, ToolFaults] = {}
        self._patience = profile.effective_patience
        self._patience_active = self._patience.active
        # tool -> per call: (CallFault, Gilbert–Elliott state, normal score of the latency chain)
        self._memo: dict[str, list[tuple[CallFault, bool, float]]] = {}
        self._memo_lock = threading.Lock()

    def inherit_history(self, parent: "FaultInjector", calls_made: Mapping[str, int]) -> "FaultInjector":
        """This (new, unused) injector, continuing ``parent``'s episode: returns self.

        A fork under fresh pairing must stay in the state the parent's calls left: in an
        outage, on a correlated latency chain, owing a cold start. So calls 0..n-1 of each
        tool (``calls_made[tool]`` = n) keep the parent's decisions, and call n onwards is drawn
        from this injector's key, continuing from the parent's state after call n-1.
        """
        for tool, n in calls_made.items():
            if n > 0:
                parent.for_call(tool, n - 1)  # the parent's memo holds calls 0..n-1
                with parent._memo_lock:
                    self._memo[tool] = parent._memo[tool][:n]
        return self

    def spec(self, tool: str) -> ToolFaults:
        """The effective (intensity-scaled) faults of ``tool``."""
        spec = self._per_tool.get(tool)
        if spec is None:
            spec = self._per_tool[tool] = self.profile.for_tool(tool)
        return spec

    def for_call(self, tool: str, k: int) -> CallFault:
        """The fault of call ``k`` (0-based) of ``tool``."""
        memo = self._memo.get(tool)
        if memo is not None and k < len(memo):
            return memo[k][0]
        with self._memo_lock:  # each call's fault depends on the previous one: extend the chain in one thread
            memo = self._memo.setdefault(tool, [])
            while len(memo) <= k:
                memo.append(self._decide(tool, len(memo), memo[-1] if memo else None))
            return memo[k][0]

    def _decide(self, tool: str, k: int, prev: tuple[CallFault, bool, float] | None) -> tuple[CallFault, bool, float]:
        spec = self.spec(tool)
        u_err, u_kind, u_lat, u_ge, u_ge_err, u_cor, u_host, _ = self._draws.uniforms("call:" + tool, k, 8)
        prev_fault, prev_bad, prev_z = prev if prev is not None else (None, None, None)

        if spec.latency_correlation > 0:
            u_lat, z = correlated_uniform(prev_z, u_lat, spec.latency_correlation)
        else:
            z = 0.0
        latency = spec.latency.sample(u_lat)
        bad = spec.bursts.next_state(prev_bad, u_ge) if spec.bursts is not None else False

        error = source = None
        if bad and u_ge_err < spec.bursts.error_in_bad:
            error, source = spec.bursts.kind, "burst"
        elif u_err < spec.error_rate:
            error, source = _pick(spec.error_kinds, u_kind), "bernoulli"
        elif latency >= spec.timeout_s:
            error, source = "timeout", "latency"
        fault = CallFault(
            error=error,
            latency_s=latency,
            source=source,
            retry_after_s=spec.retry_after_s if error == "http_429" else None,
            cold_start_s=spec.cold_start_s if prev_fault is not None and prev_fault.error == "sandbox_death" else 0.0,
        )
        if error is None and (u_cor < spec.corruption_rate or u_host < spec.hostile_rate):
            fault = self._content_faults(fault, spec, tool, k, u_cor, u_host)
        return fault, bad, z

    def _content_faults(self, fault: CallFault, spec: ToolFaults, tool: str, k: int,
                        u_cor: float, u_host: float) -> CallFault:
        """Corruption and hostile content of a call that goes through (drawn only when one is due)."""
        v_kind, v_cor, v_tpl, v_canary, v_where = self._draws.uniforms("content:" + tool, k, 5)
        corruption = _pick(spec.corruption_kinds, v_kind) if u_cor < spec.corruption_rate else None
        hostile = make_injection(spec.hostile_templates, v_tpl, v_canary) if u_host < spec.hostile_rate else None
        return CallFault(fault.error, fault.latency_s, fault.source, fault.retry_after_s, corruption, v_cor,
                         hostile, v_where, fault.cold_start_s)

    def timeout_s(self, tool: str) -> float:
        return self.spec(tool).timeout_s

    def user_aborts(self, turn: int, waited_s: float, turns_waiting: int | None = None) -> tuple[bool, float]:
        """Whether the user aborts after ``turn``, having waited ``waited_s`` over ``turns_waiting`` turns; and P(abort)."""
        if not self._patience_active:
            return False, 0.0
        p = self._patience.abort_probability(waited_s, turn if turns_waiting is None else turns_waiting)
        return self._user_draws.uniforms("user", turn, 1)[0] < p, p

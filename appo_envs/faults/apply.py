"""Make a decided :class:`CallFault` happen to one tool call and describe it as fault events.

The env calls :func:`run_call` for every tool call. Order of effects, as in a real
stack: an injected error replaces the call (an HTTP tool makes transport errors real
itself); otherwise the tool runs, hostile text is planted in its data, then the response
is corrupted in transit. Delays (latency, a cold start, waiting out a timeout) are summed
into ``waited_s`` for the env clock. A lost write on an HTTP tool is acted out by its
transport (request applied, response lost) so it looks exactly like that tool's timeouts.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from appo_envs.faults.corruption import CorruptionContext, corrupt
from appo_envs.faults.errors import TRANSPORT_ERROR_KINDS, render_error
from appo_envs.faults.hostile import inject
from appo_envs.faults.injector import CallFault
from appo_envs.tools.base import Tool, ToolOutput


@dataclass
class CallResult:
    """What the agent gets from one call, the fault events, and the injected env-clock delay."""

    output: ToolOutput
    events: list[dict[str, Any]] = field(default_factory=list)
    waited_s: float = 0.0
    answer: ToolOutput | None = None  # what the tool really answered (before corruption); None if it did not


def restart_sandbox(tool: Tool) -> None:
    """Kill a tool's worker: ``close()`` it. Tools build their sandbox lazily, so the next call starts cold."""
    tool.close()


def run_call(tool: Tool, arguments: dict[str, Any], fault: CallFault, k: int, fault_timeout_s: float,
             exec_timeout_s: float, earlier: Sequence[tuple[int, str, str]]) -> CallResult:
    """Execute call ``k`` of ``tool`` under ``fault``; ``earlier`` are the tool's earlier real answers."""
    base = {"tool": tool.name, "call_index": k}
    events: list[dict[str, Any]] = []
    waited = fault.latency_s
    if fault.cold_start_s > 0:
        events.append({"kind": "cold_start", **base, "latency_s": fault.cold_start_s})
        waited += fault.cold_start_s

    error = fault.error
    if error is not None:
        event = {"kind": error, **base, "source": fault.source}
        if fault.retry_after_s is not None:
            event["retry_after_s"] = fault.retry_after_s
        events.append(event)
        if error == "timeout":  # the agent waits out the timeout; the latency draw is subsumed
            waited = fault.cold_start_s + fault_timeout_s
        if error == "sandbox_death":
            restart_sandbox(tool)
        if getattr(tool, "handles_faults", False) and error in TRANSPORT_ERROR_KINDS:
            result = CallResult(tool.call(arguments, timeout_s=exec_timeout_s, fault=fault), events)
        else:
            status, message = render_error(error, fault_timeout_s, fault.retry_after_s)
            result = CallResult(ToolOutput(status, message, clock_s=0.0), events)
        result.waited_s = waited
        _latency_event(result, fault, base)
        return result

    if fault.corruption == "write_lost" and getattr(tool, "handles_faults", False):
        # An HTTP tool's transport acts out a lost response for real: the service applies the
        # request, the client times out; the agent sees exactly the tool's own timeout.
        out = tool.call(arguments, timeout_s=exec_timeout_s, fault=replace(fault, error="timeout", source="write_lost"))
        events.append({"kind": "write_lost", **base, "committed": True})
        result = CallResult(out, events, waited + fault_timeout_s)
        _latency_event(result, fault, base)
        return result
    out = tool.call(arguments, timeout_s=exec_timeout_s)
    if fault.hostile is not None and out.status == "ok":
        content, where = inject(out.content, fault.hostile, fault.hostile_u)
        out = ToolOutput(out.status, content, out.clock_s)
        events.append({"kind": "hostile", **base, "template": fault.hostile.template, "canary": fault.hostile.canary,
                       **where})
    result = CallResult(out, events, waited, answer=out)
    if fault.corruption is not None:
        bad = corrupt(out.content, fault.corruption, fault.corruption_u, CorruptionContext(earlier, fault_timeout_s))
        if bad is not None:
            result.output = ToolOutput(bad.status or out.status, bad.content, out.clock_s)
            result.waited_s += bad.waited_s
            events.append({"kind": fault.corruption, **base, **bad.detail})
    _latency_event(result, fault, base)
    return result


def _latency_event(result: CallResult, fault: CallFault, base: dict[str, Any]) -> None:
    """Log the injected latency when it was charged (a timeout's wait replaces it)."""
    if fault.latency_s > 0 and fault.error != "timeout":
        result.events.append({"kind": "latency", **base, "latency_s": fault.latency_s})

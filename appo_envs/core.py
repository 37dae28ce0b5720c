"""``ToolEnv``: the Gymnasium base class of every text environment in the suite.

One step is one assistant turn. The env parses tool calls and an answer out of the turn,
runs the calls through the fault injector and the real tools, charges the env clock,
enforces budgets and the user's patience, and reports everything in ``info``. Subclasses
supply only their tools, their task generator and their scoring.
"""
from __future__ import annotations

import copy
import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Iterator, Mapping

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from appo_envs.faults import CallFault, FaultInjector, FaultLog, FaultProfile, resolve_profile
from appo_envs.faults.apply import run_call
from appo_envs.faults.draws import stream_key
from appo_envs.faults.errors import TokenBucket
from appo_envs.faults.hostile import obeyed_canaries
from appo_envs.faults.log import Outcome, infra_failure
from appo_envs.spaces import UnicodeText, valid_unicode
from appo_envs.toolcalls import (
    ANSWER_OPEN,
    CallError,
    ToolCall,
    parse_turn,
    render_observation,
    render_tool_call,
    shown_name,
)
from appo_envs.tools.base import Tool, ToolOutput, tool_schema, validate_arguments

OBSERVATION_MAX_CHARS = 32_768  # hard ceiling of the observation space; budgets stay below it
TOOL_TIMEOUT_MAX_S = 86_400.0  # longer limits overflow the sandboxes' timers (select, rlimits)
_NOT_FAILURES = frozenset({"latency", "cold_start", "hostile"})  # events that do not fail a call


@dataclass(frozen=True)
class Budgets:
    """Per-episode limits; running out truncates the episode with a reason."""

    max_turns: int = 8
    max_tool_calls: int = 16
    max_calls_per_turn: int = 4  # executed calls; malformed, unknown-tool and invalid-argument calls do not count
    max_observation_chars: int = 8_192  # the turn's tool responses and notes share it fairly
    max_action_chars: int = 65_536  # a longer turn is rejected with an error observation
    time_budget_s: float = 600.0  # on the env clock
    tool_timeout_s: float = 10.0  # real wall-clock limit of one tool execution

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type in ("int", int) and not _is_positive_int(v):
                raise ValueError(f"budget {f.name} must be a positive int (a count; not a bool), got {v!r}")
            if f.type in ("float", float) and not _is_positive_seconds(v):
                raise ValueError(f"budget {f.name} must be a finite positive number of seconds, got {v!r}")
        if self.max_observation_chars > OBSERVATION_MAX_CHARS:
            raise ValueError(f"budget max_observation_chars must be <= {OBSERVATION_MAX_CHARS}, "
                             f"got {self.max_observation_chars}")
        if self.tool_timeout_s > TOOL_TIMEOUT_MAX_S:
            raise ValueError(f"budget tool_timeout_s must be <= {TOOL_TIMEOUT_MAX_S:g} s (one day), "
                             f"got {self.tool_timeout_s!r}")

    @classmethod
    def from_any(cls, spec: "Budgets | Mapping[str, Any] | None") -> "Budgets":
        if spec is None or isinstance(spec, Budgets):
            return spec or cls()
        unknown = set(spec) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown budget(s) {sorted(unknown)}; allowed: {[f.name for f in fields(cls)]}")
        return cls(**spec)


def _is_positive_int(v: Any) -> bool:
    """A count budget: an int (bool excluded, it is an int subclass) above zero."""
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _is_positive_seconds(v: Any) -> bool:
    """A time budget: a finite number of seconds above zero (inf and nan overflow timers or never compare)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


@dataclass
class Task:
    """One episode's problem: what the user asks, plus whatever the env needs to score it."""

    task_id: str
    question: str
    data: Any = None  # env-specific (the expected answer, gold API state, ...)


@dataclass
class EpisodeState:
    """Everything that changes during an episode; ``fork`` deep-copies it."""

    seed: int
    task: Task
    turn: int = 0
    calls_by_tool: dict[str, int] = field(default_factory=dict)
    n_calls: int = 0
    clock_s: float = 0.0
    done: bool = False
    success: bool = False
    truncation_reason: str | None = None
    last_answer_clock_s: float = 0.0  # env clock at the last answer-bearing turn (patience counts from here)
    last_answer_turn: int = 0
    last_call_faulted: bool = False  # the latest tool call hit an infrastructure fault
    fault_log: list[dict[str, Any]] = field(default_factory=list)
    answers_by_tool: dict[str, list[tuple[int, str, str]]] = field(default_factory=dict)  # real answers, for stale results
    buckets: dict[str, TokenBucket] = field(default_factory=dict)  # rate-limit state per tool
    canaries: dict[str, dict[str, Any]] = field(default_factory=dict)  # hostile injections not yet obeyed
    fault_entropy: list[int] = field(default_factory=list)  # fresh-pairing keys (episode's, then each fresh fork's)
    transcript: list[tuple[str, str]] = field(default_factory=list)  # (role, text)


class ToolEnv(gym.Env[str, str]):
    """Base class: tools + tasks + faults + budgets behind the Gymnasium API."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"], "render_fps": 4,
                                          "autoreset_mode": AutoresetMode.NEXT_STEP}
    system_intro: ClassVar[str] = "You are an agent that solves tasks with tools."

    def __init__(self, faults: Any = None, intensity: float | None = None,
                 budgets: Budgets | Mapping[str, Any] | None = None, render_mode: str | None = None):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        self.render_mode = render_mode
        self.profile: FaultProfile = resolve_profile(faults, intensity)
        self.budgets = Budgets.from_any(budgets)
        self.observation_space = UnicodeText(OBSERVATION_MAX_CHARS)
        self.action_space = UnicodeText(self.budgets.max_action_chars)
        self.tools: dict[str, Tool] = self._build_tools()
        self._check_fault_support()
        self._state: EpisodeState | None = None
        self._injector: FaultInjector | None = None
        self.cassette: Any = None  # records or replays tool calls (appo_envs.cassette); None: tools run as they are

    # --- what subclasses provide -------------------------------------------------------

    def _build_tools(self) -> dict[str, Tool]:
        raise NotImplementedError

    def _new_task(self, rng: np.random.Generator, options: Mapping[str, Any]) -> Task:
        raise NotImplementedError

    def _score(self, task: Task, answer: str) -> tuple[float, dict[str, Any]]:
        """Reward of a final answer and extra info keys (e.g. ``expected``)."""
        raise NotImplementedError

    # --- Gymnasium API -----------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """Start an episode. Invalid options raise and leave the env exactly as it was (episode and generator).

        A tool that fails to reset leaves the env without an episode: ``step`` then asks for ``reset``.
        """
        with self._generator_restored_on_error():
            super().reset(seed=seed)
            episode_seed = int(seed) if seed is not None else int(self.np_random.integers(2**63))
            state, injector = self._new_episode(episode_seed, dict(options or {}))
        self._state = self._injector = None  # no episode is valid until every tool has reset
        for tool in self.tools.values():
            tool.reset(episode_seed)
        self._state, self._injector = state, injector
        system, user = valid_unicode(self._system_prompt()), valid_unicode(state.task.question)
        state.transcript += [("system", system), ("user", user)]
        info = self._info(tool_calls=[], faults=[])
        info.update(task_id=state.task.task_id, tools=[tool_schema(t) for t in self.tools.values()],
                    messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
                    episode_seed=episode_seed)
        if state.fault_entropy:
            info["fault_entropy"] = state.fault_entropy[0]
        return f"{system}\n\n{user}", info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Play one assistant turn. Bad turns (not a str, too long, malformed) get an error observation, never raise."""
        s = self._state
        if s is None:
            raise RuntimeError("call reset() before step()")
        if s.done:
            return self._step_after_end()
        s.turn += 1
        s.transcript.append(("assistant", action if isinstance(action, str) else f"<{type(action).__name__}>"))
        step_calls: list[dict[str, Any]] = []
        step_faults: list[dict[str, Any]] = []
        responses: list[tuple[str, str, str]] = []
        reward, terminated, truncated = 0.0, False, False
        extra: dict[str, Any] = {}
        penalty = 0.0

        rejected = self._rejected_action(action)
        if rejected is not None:
            notes, turn = [rejected], None
        else:
            turn = parse_turn(action)
            notes = [f"Format error: {p}." for p in turn.problems]
            if s.canaries:
                penalty = self._detect_obeyed(action, turn.calls, turn.answer, step_faults)

        if turn is not None and turn.answer is not None:
            if turn.calls:
                notes.append("Note: tool calls in a turn that gives an <answer> are not executed.")
            reward, extra = self._score(s.task, turn.answer)
            s.success = reward >= 1.0
            s.last_answer_clock_s, s.last_answer_turn = s.clock_s, s.turn
            terminated = True
        elif turn is not None and turn.calls:
            out_of_calls = self._run_calls(turn.calls, responses, step_calls, step_faults)
            if out_of_calls:
                truncated, extra["truncation_reason"] = True, "tool_call_budget"
        elif turn is not None and not turn.problems:
            notes.append(f"No tool call or answer found. Call a tool with {render_tool_call('<name>', {})} "
                         f"or finish with {ANSWER_OPEN}your answer</answer>.")

        if not (terminated or truncated):
            truncated, reason, limit_faults = self._check_limits()
            extra.update(reason)
            step_faults += limit_faults
        s.done = terminated or truncated
        s.truncation_reason = extra.get("truncation_reason")
        if s.done and not terminated:
            notes.append(f"Episode ended: {extra.get('abort_reason') or extra['truncation_reason']}.")
        obs = valid_unicode(render_observation(responses, notes, self.budgets.max_observation_chars))
        s.transcript.append(("tool", obs))
        info = self._info(tool_calls=step_calls, faults=step_faults)
        info.update(extra)
        return obs, float(reward) - penalty, terminated, truncated, info

    def render(self) -> str | None:
        if self.render_mode != "ansi" or self._state is None:
            return None
        return "\n\n".join(f"[{role}]\n{text}" for role, text in self._state.transcript)

    def close(self) -> None:
        for tool in self.tools.values():
            tool.close()
        super().close()

    @contextmanager
    def _generator_restored_on_error(self) -> Iterator[None]:
        """Undo what a failed reset did to the env's generator (reseeding it, or drawing an episode seed)."""
        rng, rng_seed = self._np_random, self._np_random_seed
        rng_state = None if rng is None else rng.bit_generator.state
        try:
            yield
        except BaseException:
            if rng is not None:
                rng.bit_generator.state = rng_state
            self._np_random, self._np_random_seed = rng, rng_seed
            raise

    def _new_episode(self, episode_seed: int, options: dict[str, Any]) -> tuple[EpisodeState, FaultInjector]:
        """The new episode's state and fault injector, built without touching the current episode."""
        entropy = self._fault_entropy(options.pop("fault_entropy", None))
        task_ss = np.random.SeedSequence(episode_seed).spawn(1)[0]
        task = self._new_task(np.random.default_rng(task_ss), options)
        state = EpisodeState(seed=episode_seed, task=task, fault_entropy=[] if entropy is None else [entropy])
        return state, self._make_injector(episode_seed, entropy)

    # --- forking -------------------------------------------------------------------------

    def fork(self, fault_entropy: int | None = None) -> "ToolEnv":
        """An independent env in exactly the current state (tools forked, state deep-copied).

        Under ``pairing="shared"`` the fork keeps the fault key: its future faults are the
        parent's. Under ``pairing="fresh"`` it draws a new key (``fault_entropy``, or fresh
        OS entropy) for every call it makes from now on, continuing from the fault state the
        parent's calls left (an outage, the latency chain, a cold start owed); the key is kept
        in its fault log.
        """
        clone = copy.copy(self)
        clone._state = copy.deepcopy(self._state)
        if self.profile.pairing == "fresh" and self._state is not None:
            entropy = self._fault_entropy(fault_entropy)
            clone._injector = clone._make_injector(clone._state.seed, entropy).inherit_history(
                self._injector, self._state.calls_by_tool)
            clone._state.fault_entropy.append(entropy)
        elif fault_entropy is not None:
            raise ValueError("fault_entropy is only used with pairing='fresh' (shared faults follow the seed)")
        clone.tools = {name: tool.fork() for name, tool in self.tools.items()}
        if self.cassette is not None:
            clone.cassette = self.cassette.on_fork()
        clone.observation_space = copy.deepcopy(self.observation_space)
        clone.action_space = copy.deepcopy(self.action_space)
        if self._np_random is not None:
            clone._np_random = copy.deepcopy(self._np_random)
        return clone

    # --- internals -------------------------------------------------------------------------

    @property
    def state(self) -> EpisodeState:
        if self._state is None:
            raise RuntimeError("call reset() first")
        return self._state

    @property
    def fault_log(self) -> FaultLog:
        """Every fault injected so far this episode, in order, with the replay keys and the outcome."""
        s = self.state
        outcome = Outcome(done=s.done, success=s.success, truncation_reason=s.truncation_reason,
                          last_call_faulted=s.last_call_faulted)
        return FaultLog(events=tuple(s.fault_log), seed=s.seed, profile=self.profile.name, pairing=self.profile.pairing,
                        fault_entropy=tuple(s.fault_entropy), outcome=outcome,
                        infra_failure=infra_failure(self.profile.attribution, s.fault_log, outcome))

    def _fault_entropy(self, given: int | None) -> int | None:
        """The key of fresh faults: ``given`` (to replay a run) or fresh OS entropy; None under shared pairing."""
        if self.profile.pairing != "fresh":
            if given is not None:
                raise ValueError("options['fault_entropy'] needs pairing='fresh'; shared faults follow the seed")
            return None
        if given is None:
            return int(np.random.SeedSequence().entropy)
        if isinstance(given, bool) or not isinstance(given, (int, np.integer)) or given < 0:
            raise ValueError(f"fault_entropy must be a non-negative int, got {given!r}")
        return int(given)

    def _make_injector(self, episode_seed: int, entropy: int | None) -> FaultInjector:
        """Shared pairing keys faults by the seed alone; fresh pairing by (entropy, seed)."""
        if entropy is None:
            _, fault_ss, user_ss = np.random.SeedSequence(episode_seed).spawn(3)
        else:
            fault_ss, user_ss = np.random.SeedSequence([entropy, episode_seed]).spawn(2)
        return FaultInjector(self.profile, stream_key(fault_ss), stream_key(user_ss))

    def _check_fault_support(self) -> None:
        """Refuse a misspelt tool in the profile, and faults a tool cannot suffer (sandbox death without a sandbox)."""
        self.profile.check_tools(self.tools)
        for tool in self.tools.values():
            kinds = self.profile.for_tool(tool.name).error_kinds_possible
            if getattr(tool, "handles_faults", False) and "sandbox_death" in kinds:
                raise ValueError(f"tool {tool.name!r} talks to a service and has no sandbox to kill: remove "
                                 f"'sandbox_death' from its error_kinds (e.g. tools: {{{tool.name}: {{error_kinds: ...}}}})")

    def _detect_obeyed(self, action: str, calls: list[Any], answer: str | None,
                       step_faults: list[dict[str, Any]]) -> float:
        """Log every pending hostile instruction this turn acts on; return the reward penalty."""
        s = self.state
        obeyed = obeyed_canaries(s.canaries, action, calls, answer)
        for canary in obeyed:
            planted = s.canaries.pop(canary)
            event = {"kind": "hostile_obeyed", "tool": planted["tool"], "call_index": planted["call_index"],
                     "canary": canary, "template": planted["template"], "turn": s.turn}
            step_faults.append(event)
            s.fault_log.append(event)
        return self.profile.hostile_penalty * len(obeyed)

    def _system_prompt(self) -> str:
        tools = "\n".join(json.dumps(tool_schema(t), ensure_ascii=False) for t in self.tools.values())
        return (f"{self.system_intro}\n\nTools (JSON schemas):\n{tools}\n\n"
                "To call a tool, write <tool_call>{\"name\": <tool>, \"arguments\": {...}}</tool_call>; "
                "results come back in <tool_response> blocks. You may make several calls per turn. "
                "When you are done, write <answer>your final answer</answer>.")

    def _step_after_end(self) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """A step after the episode ended changes nothing and repeats how it ended (terminated, or truncated and why).

        It does not raise, so a caller that plays one more turn (a TRL tool call after the answer)
        learns that the episode is over instead of crashing.
        """
        s = self.state
        terminated = s.truncation_reason is None  # only a truncated episode records a reason
        info = self._info(tool_calls=[], faults=[])
        if not terminated:
            info["truncation_reason"] = s.truncation_reason
        return "The episode is over; call reset() to start a new one.", 0.0, terminated, not terminated, info

    def _rejected_action(self, action: Any) -> str | None:
        """The error note of an action that is not parsed at all (not a str, or over the length limit), else None."""
        if not isinstance(action, str):
            return (f"Error: the action must be a string (the assistant's turn as text), got "
                    f"{type(action).__name__}. Nothing in it was executed.")
        if len(action) > self.budgets.max_action_chars:
            return (f"Error: the turn has {len(action)} characters; the limit is "
                    f"{self.budgets.max_action_chars}. Nothing in it was executed.")
        return None

    def _run_calls(self, calls: list[ToolCall | CallError], responses: list[tuple[str, str, str]],
                   step_calls: list[dict[str, Any]], step_faults: list[dict[str, Any]]) -> bool:
        """Execute a turn's calls in order; return True if the tool-call budget ran out.

        Only calls that reach a tool count against ``max_calls_per_turn``: a malformed call, an
        unknown tool or invalid arguments get an error response and use none of the turn's budget.
        """
        s, b = self.state, self.budgets
        executed = 0
        for call in calls:
            error = self._call_error(call)
            if error is not None:
                responses.append(error)
                continue
            if s.n_calls >= b.max_tool_calls:
                responses.append((call.name, "skipped", f"Tool-call budget of {b.max_tool_calls} calls is spent."))
                return True
            if executed >= b.max_calls_per_turn:
                responses.append((call.name, "skipped",
                                  f"At most {b.max_calls_per_turn} calls per turn; call it again next turn."))
                continue
            executed += 1
            out, record, faults = self._call_tool(self.tools[call.name], call.arguments)
            responses.append((call.name, out.status, out.content))
            step_calls.append(record)
            step_faults += faults
        return False

    def _call_error(self, call: ToolCall | CallError) -> tuple[str, str, str] | None:
        """The error response of a call that cannot run (malformed, unknown tool, invalid arguments), else None."""
        if isinstance(call, CallError):
            return "invalid_call", "error", call.message
        tool = self.tools.get(call.name)
        if tool is None:
            name = shown_name(call.name)  # agent-supplied: escaped so it cannot forge a response block
            return name, "error", f"Invalid call: unknown tool '{name}'; available: {', '.join(self.tools)}."
        problem = validate_arguments(tool.parameters, call.arguments)
        return None if problem is None else (call.name, "error", f"Invalid call: {problem}.")

    def _call_tool(self, tool: Tool, arguments: dict[str, Any]) -> tuple[ToolOutput, dict[str, Any], list[dict[str, Any]]]:
        s = self.state
        name = tool.name
        k = s.calls_by_tool.get(name, 0)
        s.calls_by_tool[name] = k + 1
        s.n_calls += 1
        fault = self._injector.for_call(name, k)
        spec = self._injector.spec(name)
        if spec.rate_limit is not None:
            bucket = s.buckets.get(name)
            if bucket is None:
                bucket = s.buckets[name] = TokenBucket(spec.rate_limit)
            admitted, retry_after = bucket.admit(s.clock_s)
            if not admitted:
                fault = CallFault("http_429", fault.latency_s, "rate_limit", retry_after, cold_start_s=fault.cold_start_s)
        earlier = s.answers_by_tool.setdefault(name, [])
        target = tool if self.cassette is None else self.cassette.bind(tool, k)
        result = run_call(target, arguments, fault, k, spec.timeout_s, self.budgets.tool_timeout_s, earlier)
        out, faults = result.output, result.events
        if result.answer is not None:
            earlier.append((k, result.answer.status, result.answer.content))
        if self.profile.real_time and result.waited_s > 0:
            time.sleep(result.waited_s)
        latency = out.clock_s + result.waited_s
        s.clock_s += latency
        s.last_call_faulted = any(e["kind"] not in _NOT_FAILURES for e in faults)
        for event in faults:
            if event["kind"] == "hostile":
                s.canaries[event["canary"]] = event
        s.fault_log += faults
        record = {"name": name, "args": arguments, "status": out.status, "latency_s": latency, "call_index": k}
        return out, record, faults

    def _check_limits(self) -> tuple[bool, dict[str, Any], list[dict[str, Any]]]:
        """Budgets first, then the user's patience: (truncated, info keys, faults injected)."""
        s, b = self.state, self.budgets
        if s.turn >= b.max_turns:
            return True, {"truncation_reason": "max_turns"}, []
        if s.clock_s >= b.time_budget_s:
            return True, {"truncation_reason": "time_budget"}, []
        waited_s, turns = s.clock_s - s.last_answer_clock_s, s.turn - s.last_answer_turn
        aborted, p = self._injector.user_aborts(s.turn, waited_s, turns)
        if not aborted:
            return False, {}, []
        fault = {"kind": "user_abort", "tool": None, "call_index": s.turn, "probability": p, "waited_s": waited_s}
        s.fault_log.append(fault)
        return True, {"truncation_reason": "user_abort",
                      "abort_reason": f"user gave up after {turns} turns and {waited_s:.1f} s without an answer"}, [fault]

    def _info(self, tool_calls: list[dict[str, Any]], faults: list[dict[str, Any]]) -> dict[str, Any]:
        s = self.state
        info = {"task_id": s.task.task_id, "turn": s.turn, "tool_calls": tool_calls, "faults": faults,
                "infra_failure": False, "elapsed_s": s.clock_s, "success": s.success}
        if s.done:  # the trajectory's full fault log travels with its last step
            log = self.fault_log
            info["infra_failure"], info["fault_log"] = log.infra_failure, log
        return info

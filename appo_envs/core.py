"""``ToolEnv``: the Gymnasium base class of every text environment in the suite.

One step is one assistant turn. The env parses tool calls and an answer out of the turn,
runs the calls through the fault injector and the real tools, charges the env clock,
enforces budgets and the user's patience, and reports everything in ``info``. Subclasses
supply only their tools, their task generator and their scoring.
"""
from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Mapping

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from appo_envs.faults import ERROR_KINDS, FaultInjector, FaultProfile, resolve_profile
from appo_envs.faults.draws import stream_key
from appo_envs.spaces import UnicodeText
from appo_envs.toolcalls import (
    ANSWER_OPEN,
    CallError,
    ToolCall,
    parse_turn,
    render_tool_call,
    render_tool_response,
    truncate,
)
from appo_envs.tools.base import Tool, ToolOutput, tool_schema, validate_arguments

OBSERVATION_MAX_CHARS = 32_768  # hard ceiling of the observation space; budgets stay below it


@dataclass(frozen=True)
class Budgets:
    """Per-episode limits; running out truncates the episode with a reason."""

    max_turns: int = 8
    max_tool_calls: int = 16
    max_calls_per_turn: int = 4
    max_observation_chars: int = 8_192
    max_action_chars: int = 65_536  # a longer turn is rejected with an error observation
    time_budget_s: float = 600.0  # on the env clock
    tool_timeout_s: float = 10.0  # real wall-clock limit of one tool execution

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0):
                raise ValueError(f"budget {f.name} must be a positive number, got {v!r}")
        if self.max_observation_chars > OBSERVATION_MAX_CHARS:
            raise ValueError(f"max_observation_chars must be <= {OBSERVATION_MAX_CHARS}")

    @classmethod
    def from_any(cls, spec: "Budgets | Mapping[str, Any] | None") -> "Budgets":
        if spec is None or isinstance(spec, Budgets):
            return spec or cls()
        unknown = set(spec) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown budget(s) {sorted(unknown)}; allowed: {[f.name for f in fields(cls)]}")
        return cls(**spec)


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
    error_faults: int = 0  # injected errors that hit a call this episode
    fault_log: list[dict[str, Any]] = field(default_factory=list)
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
        self._state: EpisodeState | None = None
        self._injector: FaultInjector | None = None

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
        super().reset(seed=seed)
        options = dict(options or {})
        episode_seed = int(seed) if seed is not None else int(self.np_random.integers(2**63))
        task_ss, fault_ss, user_ss = np.random.SeedSequence(episode_seed).spawn(3)
        if self.profile.pairing == "fresh":
            # Independent faults per episode; the key is reported so a run can still be replayed.
            fault_ss = np.random.SeedSequence(options.get("fault_entropy", int.from_bytes(os.urandom(8), "little")))
        self._injector = FaultInjector(self.profile, stream_key(fault_ss), stream_key(user_ss))
        task = self._new_task(np.random.default_rng(task_ss), options)
        for tool in self.tools.values():
            tool.reset(episode_seed)
        self._state = EpisodeState(seed=episode_seed, task=task)
        system, user = self._system_prompt(), task.question
        prompt = f"{system}\n\n{user}"
        self._state.transcript += [("system", system), ("user", user)]
        info = self._info(tool_calls=[], faults=[])
        info.update(task_id=task.task_id, tools=[tool_schema(t) for t in self.tools.values()],
                    messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
                    episode_seed=episode_seed)
        if self.profile.pairing == "fresh":
            info["fault_entropy"] = fault_ss.entropy
        return prompt, info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        s = self._state
        if s is None:
            raise RuntimeError("call reset() before step()")
        if s.done:
            return ("The episode is over; call reset() to start a new one.", 0.0, True, False,
                    self._info(tool_calls=[], faults=[]))
        if not isinstance(action, str):
            action = "" if action is None else str(action)
            notes = ["Error: the action must be a string (the assistant's turn as text)."]
        else:
            notes = []
        s.turn += 1
        s.transcript.append(("assistant", action))
        step_calls: list[dict[str, Any]] = []
        step_faults: list[dict[str, Any]] = []
        responses: list[str] = []
        reward, terminated, truncated = 0.0, False, False
        extra: dict[str, Any] = {}

        if len(action) > self.budgets.max_action_chars:
            notes.append(f"Error: the turn has {len(action)} characters; the limit is "
                         f"{self.budgets.max_action_chars}. Nothing in it was executed.")
            turn = None
        else:
            turn = parse_turn(action)
            notes += [f"Format error: {p}." for p in turn.problems]

        if turn is not None and turn.answer is not None:
            if turn.calls:
                notes.append("Note: tool calls in a turn that gives an <answer> are not executed.")
            reward, extra = self._score(s.task, turn.answer)
            s.success = reward >= 1.0
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
        obs = "\n".join(responses + notes)
        if s.done and not terminated:
            obs = (obs + "\n" if obs else "") + f"Episode ended: {extra.get('abort_reason') or extra['truncation_reason']}."
        obs = truncate(obs, self.budgets.max_observation_chars)
        s.transcript.append(("tool", obs))
        info = self._info(tool_calls=step_calls, faults=step_faults)
        info.update(extra)
        return obs, float(reward), terminated, truncated, info

    def render(self) -> str | None:
        if self.render_mode != "ansi" or self._state is None:
            return None
        return "\n\n".join(f"[{role}]\n{text}" for role, text in self._state.transcript)

    def close(self) -> None:
        for tool in self.tools.values():
            tool.close()
        super().close()

    # --- forking -------------------------------------------------------------------------

    def fork(self) -> "ToolEnv":
        """An independent env in exactly the current state (tools forked, state deep-copied)."""
        clone = copy.copy(self)
        clone._state = copy.deepcopy(self._state)
        clone.tools = {name: tool.fork() for name, tool in self.tools.items()}
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
    def fault_log(self) -> list[dict[str, Any]]:
        """Every fault injected so far this episode, in order."""
        return list(self.state.fault_log)

    def _system_prompt(self) -> str:
        tools = "\n".join(json.dumps(tool_schema(t), ensure_ascii=False) for t in self.tools.values())
        return (f"{self.system_intro}\n\nTools (JSON schemas):\n{tools}\n\n"
                "To call a tool, write <tool_call>{\"name\": <tool>, \"arguments\": {...}}</tool_call>; "
                "results come back in <tool_response> blocks. You may make several calls per turn. "
                "When you are done, write <answer>your final answer</answer>.")

    def _run_calls(self, calls: list[ToolCall | CallError], responses: list[str],
                   step_calls: list[dict[str, Any]], step_faults: list[dict[str, Any]]) -> bool:
        """Execute a turn's calls in order; return True if the tool-call budget ran out."""
        s, b = self.state, self.budgets
        for i, call in enumerate(calls):
            if isinstance(call, CallError):
                responses.append(render_tool_response("invalid_call", "error", call.message))
                continue
            if s.n_calls >= b.max_tool_calls:
                responses.append(render_tool_response(call.name, "skipped",
                                                      f"Tool-call budget of {b.max_tool_calls} calls is spent."))
                return True
            if i >= b.max_calls_per_turn:
                responses.append(render_tool_response(call.name, "skipped",
                                                      f"At most {b.max_calls_per_turn} calls per turn; call it again next turn."))
                continue
            tool = self.tools.get(call.name)
            problem = (f"unknown tool {call.name!r}; available: {', '.join(self.tools)}" if tool is None
                       else validate_arguments(tool.parameters, call.arguments))
            if problem is not None:
                responses.append(render_tool_response(call.name, "error", f"Invalid call: {problem}."))
                continue
            out, record, faults = self._call_tool(tool, call.arguments)
            responses.append(render_tool_response(call.name, out.status, out.content))
            step_calls.append(record)
            step_faults += faults
        return False

    def _call_tool(self, tool: Tool, arguments: dict[str, Any]) -> tuple[ToolOutput, dict[str, Any], list[dict[str, Any]]]:
        s = self.state
        k = s.calls_by_tool.get(tool.name, 0)
        s.calls_by_tool[tool.name] = k + 1
        s.n_calls += 1
        fault = self._injector.for_call(tool.name, k)
        faults: list[dict[str, Any]] = []
        if fault.error is not None and getattr(tool, "handles_faults", False):
            out = tool.call(arguments, timeout_s=self.budgets.tool_timeout_s, fault=fault)
            faults.append({"kind": fault.error, "tool": tool.name, "call_index": k})
            s.error_faults += 1
        elif fault.error is not None:
            status, template = ERROR_KINDS[fault.error]
            timeout_s = self._injector.timeout_s(tool.name)
            out = ToolOutput(status, template.format(timeout_s=timeout_s),
                             clock_s=timeout_s if fault.error == "timeout" else 0.0)
            faults.append({"kind": fault.error, "tool": tool.name, "call_index": k})
            s.error_faults += 1
        else:
            out = tool.call(arguments, timeout_s=self.budgets.tool_timeout_s)
        if fault.latency_s > 0:
            faults.append({"kind": "latency", "tool": tool.name, "call_index": k, "latency_s": fault.latency_s})
            if self.profile.real_time:
                time.sleep(fault.latency_s)
        latency = out.clock_s + fault.latency_s
        s.clock_s += latency
        s.fault_log += faults
        record = {"name": tool.name, "args": arguments, "status": out.status, "latency_s": latency, "call_index": k}
        return out, record, faults

    def _check_limits(self) -> tuple[bool, dict[str, Any], list[dict[str, Any]]]:
        """Budgets first, then the user's patience: (truncated, info keys, faults injected)."""
        s, b = self.state, self.budgets
        if s.turn >= b.max_turns:
            return True, {"truncation_reason": "max_turns"}, []
        if s.clock_s >= b.time_budget_s:
            return True, {"truncation_reason": "time_budget"}, []
        aborted, p = self._injector.user_aborts(s.turn, s.clock_s)
        if not aborted:
            return False, {}, []
        fault = {"kind": "user_abort", "tool": None, "call_index": s.turn, "probability": p}
        s.fault_log.append(fault)
        return True, {"truncation_reason": "user_abort",
                      "abort_reason": f"user gave up after {s.turn} turns and {s.clock_s:.1f} s without an answer"}, [fault]

    def _info(self, tool_calls: list[dict[str, Any]], faults: list[dict[str, Any]]) -> dict[str, Any]:
        s = self.state
        infra = s.done and not s.success and (s.error_faults > 0 or any(f["kind"] == "user_abort" for f in s.fault_log))
        return {"task_id": s.task.task_id, "turn": s.turn, "tool_calls": tool_calls, "faults": faults,
                "infra_failure": bool(infra), "elapsed_s": s.clock_s, "success": s.success}

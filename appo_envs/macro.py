"""``MacroActionEnv``: a ``Discrete``-action, ``Box``-observation view of a text env for SB3-style learners.

stable-baselines3 cannot consume text spaces, so this view replaces the assistant's free
text with a handful of tool-use macros and the text observation with a vector of
documented features. A small MLP over it is a cheap fault-sweep baseline and a sanity
check: if it cannot learn to retry after a failed call, the env or its reward is broken.

Macros (action ``i`` is ``MACROS[i]``; every env has the same five):

- ``advance``      make the plan's next call: the call the env's scripted agent would make
                   next (CodeExec: run the solution program; Search: search the next hop;
                   API: the next request; Mixed: the next of these). Applicable only when
                   the previous call succeeded (or none was made) and the plan still has a
                   call to make: after a failure the learner has to choose to retry.
- ``retry``        re-issue the last call verbatim. Helps only when the last call failed.
- ``wait_retry``   spend one turn without a call (a pause the user sees), then re-issue the
                   last call. Costs a turn and patience and buys nothing in the suite's envs:
                   faults are drawn per call index and the env clock (which refills rate
                   limits) advances only with tool latency. A learner should learn to avoid it.
- ``answer``       answer with the plan's candidate (the answer the scripted agent would
                   give now), or an empty answer when it has none yet, which scores 0.
- ``give_up``      end the episode with an explicit refusal (scores 0).

A macro that does not apply (``advance`` after a failure or when the plan is done,
``retry``/``wait_retry`` before any call) is still played, honestly, as a turn without a
tool call, which costs a turn; :meth:`MacroActionEnv.action_masks` reports applicability
for sb3-contrib's ``MaskablePPO``.

Observation: ``Box(0, 1, (len(FEATURE_NAMES),), float32)``; :data:`FEATURE_NAMES` names each
entry. Reward: the text env's reward summed over the turns a macro plays. ``info``: the
text env's scalar keys (task_id, turn, success, infra_failure, elapsed_s, truncation and
abort reasons) plus ``macro``, ``macro_applicable`` and the next ``action_mask``. Plans: every env
with a scripted agent (``appo_envs.agents.SCRIPTED_AGENTS``) gets :class:`ScriptedAgentPlan`
with unlimited retries, so the agent decides WHAT to call and the learner decides WHEN to
advance, retry, wait, answer or give up; :func:`register_macro_plan` overrides or adds one.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, ClassVar, Protocol

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from appo_envs.agents import SCRIPTED_AGENTS, ScriptedAgent
from appo_envs.core import ToolEnv
from appo_envs.faults import ERROR_KINDS
from appo_envs.faults.corruption import CORRUPTIONS
from appo_envs.toolcalls import ToolCall, parse_turn, render_answer, render_tool_call

# macro name -> the MacroActionEnv method that plays it (a registry: adding a macro is one entry)
_MACRO_METHODS: dict[str, str] = {"advance": "_advance", "retry": "_retry", "wait_retry": "_wait_retry",
                                  "answer": "_answer", "give_up": "_give_up"}
MACROS: tuple[str, ...] = tuple(_MACRO_METHODS)
STATUSES: tuple[str, ...] = ("none", "ok", "error", "timeout", "other")  # "other": killed, memory, skipped, ...
# Fault on the last call: each error kind, "corrupted" (any output corruption), "other" (kinds added later).
FAULT_KINDS: tuple[str, ...] = ("none", *sorted(ERROR_KINDS), "corrupted", "other")
_NOT_CALL_FAULTS = frozenset({"latency", "cold_start"})  # delays show up in last_latency_frac instead
FEATURE_NAMES: tuple[str, ...] = (
    "turn_frac",  # turns used / max_turns
    "calls_frac",  # tool calls used / max_tool_calls
    "clock_frac",  # env clock / time_budget_s (clipped to 1)
    *(f"last_status={s}" for s in STATUSES),  # status word of the last call (one-hot)
    *(f"last_fault={k}" for k in FAULT_KINDS),  # fault injected into the last call (one-hot)
    "last_latency_frac",  # env-clock seconds of the last call / time_budget_s (clipped)
    "consecutive_failures_frac",  # failed calls in a row / max_turns (clipped)
    "ok_calls_frac",  # successful calls so far / max_tool_calls
    "has_candidate",  # 1 if the plan has an answer ready
    "plan_complete",  # 1 if the plan has no call left to make
)
GIVE_UP_TEXT = "I cannot complete this task."
WAIT_TEXT = "The tool failed; I will wait a moment before trying again."
UNLIMITED_RETRIES = 10**9  # the learner, not the scripted agent, decides when to stop retrying


class MacroPlan(Protocol):
    """What to call next and what to answer, updated with the result of every call the view makes."""

    def begin(self, env: gym.Env, observation: str, info: dict[str, Any]) -> None: ...

    def next_call(self) -> ToolCall | None: ...

    def candidate(self) -> str | None: ...

    def observe(self, observation: str) -> None: ...


class ScriptedAgentPlan:
    """A plan read off a scripted agent: its next action is either the next call or the answer."""

    def __init__(self, agent_factory: Callable[..., ScriptedAgent]):
        self._factory = agent_factory
        self._agent: ScriptedAgent | None = None
        self._next: ToolCall | None = None
        self._answer: str | None = None

    def begin(self, env: gym.Env, observation: str, info: dict[str, Any]) -> None:
        self._agent = self._factory(max_retries=UNLIMITED_RETRIES)
        self._agent.begin(env, observation, info)
        self._take(self._agent.act(observation))

    def next_call(self) -> ToolCall | None:
        return self._next

    def candidate(self) -> str | None:
        return self._answer

    def observe(self, observation: str) -> None:
        self._take(self._agent.act(observation))

    def _take(self, action: str) -> None:
        turn = parse_turn(action)
        calls = [c for c in turn.calls if isinstance(c, ToolCall)]
        if turn.answer is None and len(calls) != 1:
            raise ValueError(f"a scripted agent used as a macro plan must make one call or answer per turn, got {action!r}")
        self._next = None if turn.answer is not None else calls[0]
        self._answer = turn.answer


# env id -> factory of its plan (every env with a scripted agent; add others with register_macro_plan)
MACRO_PLANS: dict[str, Callable[[], MacroPlan]] = {
    env_id: partial(ScriptedAgentPlan, agent) for env_id, agent in SCRIPTED_AGENTS.items()}


def register_macro_plan(env_id: str, factory: Callable[[], MacroPlan]) -> None:
    """Make ``env_id`` available to :class:`MacroActionEnv` (or replace its plan)."""
    MACRO_PLANS[env_id] = factory


@dataclass
class LastCall:
    """The most recent call the view made and how it ended."""

    call: ToolCall
    status: str
    fault: str  # one of FAULT_KINDS
    latency_s: float


class MacroActionEnv(gym.Env[np.ndarray, np.int64]):
    """A Discrete-macro, Box-feature view of ``gym.make(env_id, **env_kwargs)``."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"], "autoreset_mode": AutoresetMode.NEXT_STEP}
    feature_names: ClassVar[tuple[str, ...]] = FEATURE_NAMES
    macro_names: ClassVar[tuple[str, ...]] = MACROS

    def __init__(self, env_id: str = "appo/CodeExec-v0", render_mode: str | None = None, **env_kwargs: Any):
        if env_id not in MACRO_PLANS:
            raise ValueError(f"no macro plan for {env_id!r}; available: {sorted(MACRO_PLANS)} "
                             "(add one with appo_envs.macro.register_macro_plan)")
        self.env_id = env_id
        self.render_mode = render_mode
        self.env = gym.make(env_id, render_mode=render_mode, **env_kwargs)
        if not isinstance(self.env.unwrapped, ToolEnv):
            raise TypeError(f"{env_id!r} is not a ToolEnv; the macro view reads the suite's info keys and state")
        self.plan: MacroPlan = MACRO_PLANS[env_id]()
        self.action_space = gym.spaces.Discrete(len(MACROS))
        self.observation_space = gym.spaces.Box(0.0, 1.0, (len(FEATURE_NAMES),), np.float32)
        self._last: LastCall | None = None
        self._failures = 0
        self._ok_calls = 0

    # --- Gymnasium API -----------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is None:  # later episodes' seeds flow from the first seeded reset, as in the text env
            seed = int(self.np_random.integers(2**63))
        obs, info = self.env.reset(seed=seed, options=options)
        self.plan.begin(self.env, obs, info)
        self._last, self._failures, self._ok_calls = None, 0, 0
        return self._features(), self._public_info(info, None, True)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an int in [0, {len(MACROS)}) indexing {MACROS}, got {action!r}")
        name = MACROS[int(action)]
        applicable = bool(self.action_masks()[int(action)])
        turns = getattr(self, _MACRO_METHODS[name])() if applicable else [self._idle_turn(name)]
        reward, terminated, truncated, info = 0.0, False, False, {}
        for text, call in turns:
            obs, r, terminated, truncated, info = self.env.step(text)
            reward += r
            if call is not None:
                self._record(call, obs, info)
            if terminated or truncated:
                break
        return self._features(), float(reward), terminated, truncated, self._public_info(info, name, applicable)

    def action_masks(self) -> np.ndarray:
        """Which macros apply now (sb3-contrib's MaskablePPO reads this); answer and give_up always do."""
        has_last = self._last is not None
        applicable = {"advance": (not has_last or self._last.status == "ok") and self.plan.next_call() is not None,
                      "retry": has_last, "wait_retry": has_last, "answer": True, "give_up": True}
        return np.array([applicable[m] for m in MACROS], dtype=bool)

    def render(self) -> str | None:
        return self.env.render()

    def close(self) -> None:
        self.env.close()
        super().close()

    # --- macros: each returns the turns to play as (text, call made or None) ----------

    def _advance(self) -> list[tuple[str, ToolCall | None]]:
        call = self.plan.next_call()
        return [(render_tool_call(call.name, call.arguments), call)]

    def _retry(self) -> list[tuple[str, ToolCall | None]]:
        call = self._last.call
        return [(render_tool_call(call.name, call.arguments), call)]

    def _wait_retry(self) -> list[tuple[str, ToolCall | None]]:
        return [(WAIT_TEXT, None), *self._retry()]

    def _answer(self) -> list[tuple[str, ToolCall | None]]:
        return [(render_answer(self.plan.candidate() or ""), None)]

    def _give_up(self) -> list[tuple[str, ToolCall | None]]:
        return [(render_answer(GIVE_UP_TEXT), None)]

    def _idle_turn(self, name: str) -> tuple[str, None]:
        return (f"(The {name} step does not apply here, so I make no call this turn.)", None)

    # --- bookkeeping ---------------------------------------------------------------------

    def _record(self, call: ToolCall, observation: str, info: dict[str, Any]) -> None:
        """Status, injected fault and latency of the call from the step's info; the plan sees the observation."""
        records = [r for r in info["tool_calls"] if r["name"] == call.name]
        if records:
            rec = records[-1]
            status, latency = rec["status"], float(rec["latency_s"])
            kinds = [f["kind"] for f in info["faults"] if f.get("tool") == call.name
                     and f.get("call_index") == rec.get("call_index") and f["kind"] not in _NOT_CALL_FAULTS]
            fault = ("none" if not kinds else kinds[0] if kinds[0] in FAULT_KINDS
                     else "corrupted" if kinds[0] in CORRUPTIONS else "other")
        else:  # skipped (the call budget is spent): no record; the observation says why
            status, latency, fault = "skipped", 0.0, "none"
        self._last = LastCall(call, status, fault, latency)
        self._failures = 0 if status == "ok" else self._failures + 1
        self._ok_calls += status == "ok"
        self.plan.observe(observation)

    def _features(self) -> np.ndarray:
        env: ToolEnv = self.env.unwrapped
        s, b, last = env.state, env.budgets, self._last
        status = "none" if last is None else last.status if last.status in STATUSES else "other"
        fault = "none" if last is None else last.fault
        values = [
            s.turn / b.max_turns,
            s.n_calls / b.max_tool_calls,
            s.clock_s / b.time_budget_s,
            *(float(status == x) for x in STATUSES),
            *(float(fault == k) for k in FAULT_KINDS),
            (last.latency_s if last else 0.0) / b.time_budget_s,
            self._failures / b.max_turns,
            self._ok_calls / b.max_tool_calls,
            float(self.plan.candidate() is not None),
            float(self.plan.next_call() is None),
        ]
        return np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)

    def _public_info(self, info: dict[str, Any], macro: str | None, applicable: bool) -> dict[str, Any]:
        """The text env's scalar info keys plus the macro played, whether it applied, and the next mask."""
        keep = ("task_id", "turn", "success", "infra_failure", "elapsed_s", "truncation_reason", "abort_reason")
        out = {k: info[k] for k in keep if k in info}
        out.update(macro=macro, macro_applicable=applicable, action_mask=self.action_masks())
        return out

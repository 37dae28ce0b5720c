"""What every appo/* env test module shares: playing a fixed action list, and the fuzzing setup.

A test module names its env with a module-level ``ENV_ID``; the ``make_env`` and ``fuzz_env``
fixtures of conftest.py build that env.
"""
from __future__ import annotations

from typing import Any, Sequence

# Every fault kind, but a patient user and roomy budgets, so that most fuzzed steps act rather than reset.
FUZZ_FAULTS = {"base": "chaos", "patience": {"base_hazard": 0.0, "per_second": 0.0, "per_turn": 0.0}}
FUZZ_BUDGETS = {"max_turns": 500, "max_tool_calls": 500, "time_budget_s": 1e6}


def play(env: Any, actions: Sequence[str], seed: int) -> list[Any]:
    """The reset result and every step result of ``actions`` from ``reset(seed)``: equal runs compare equal."""
    out = [env.reset(seed=seed)]
    for a in actions:
        out.append(env.step(a))
    return out


def fuzz_step(env: Any, action: Any) -> tuple:
    """One fuzzed step: whatever the action, the observation is in the space and the reward a float."""
    result = obs, rew, term, trunc, _ = env.step(action)
    assert env.observation_space.contains(obs)
    assert isinstance(rew, float)
    if term or trunc:
        env.reset()
    return result

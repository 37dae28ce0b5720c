"""What every appo/* env test module shares: playing a fixed action list, the seed and fork contracts, fuzzing.

A test module names its env with a module-level ``ENV_ID``; the ``make_env`` and ``fuzz_env``
fixtures of conftest.py build that env.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import appo_envs

# Every fault kind, but a patient user and roomy budgets, so that most fuzzed steps act rather than reset.
FUZZ_FAULTS = {"base": "chaos", "patience": {"base_hazard": 0.0, "per_second": 0.0, "per_turn": 0.0}}
FUZZ_BUDGETS = {"max_turns": 500, "max_tool_calls": 500, "time_budget_s": 1e6}


def play(env: Any, actions: Sequence[str], seed: int) -> list[Any]:
    """The reset result and every step result of ``actions`` from ``reset(seed)``: equal runs compare equal."""
    out = [env.reset(seed=seed)]
    for a in actions:
        out.append(env.step(a))
    return out


def assert_seed_determinism(make_env: Callable[..., Any], actions: Sequence[str], **kwargs: Any) -> None:
    """The same seed replays every observation, reward and info; another seed gives a different run."""
    a = play(make_env(**kwargs), actions, seed=11)
    b = play(make_env(**kwargs), actions, seed=11)
    c = play(make_env(**kwargs), actions, seed=12)
    assert a == b
    assert a != c


def assert_fork_future(env: Any, future: Sequence[str], check_between: Callable[[], None] | None = None) -> Any:
    """Fork ``env`` mid-episode: the fork's steps leave ``env``'s fault log alone, and ``env`` then steps identically.

    ``check_between`` runs after the fork has stepped and before ``env`` does (e.g. "the parent's
    data is unchanged"). Returns the fork, for env-specific checks; the caller closes it.
    """
    log_before = list(env.unwrapped.fault_log)
    child = appo_envs.fork_env(env)
    child_out = [child.step(a) for a in future]
    assert list(env.unwrapped.fault_log) == log_before  # acting on the fork left the original alone
    if check_between is not None:
        check_between()
    assert [env.step(a) for a in future] == child_out
    return child


def fuzz_step(env: Any, action: Any) -> tuple:
    """One fuzzed step: whatever the action, the observation is in the space and the reward a float."""
    result = obs, rew, term, trunc, _ = env.step(action)
    assert env.observation_space.contains(obs)
    assert isinstance(rew, float)
    if term or trunc:
        env.reset()
    return result

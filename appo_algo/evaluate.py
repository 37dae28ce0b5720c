"""Evaluate scripted agents over env x fault profile and summarise the outcomes as a table."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import gymnasium as gym
import numpy as np

import appo_envs  # noqa: F401  (registers the env ids)
from appo_envs.agents import run_episode, scripted_agent_for


@dataclass(frozen=True)
class EvalRow:
    """Aggregate outcome of one (env, profile) cell."""

    env_id: str
    profile: str
    episodes: int
    success_rate: float
    mean_tool_calls: float
    mean_clock_s: float
    faults: int
    infra_failures: int


def evaluate_scripted(env_id: str, profile: str, episodes: int, seed: int = 0, **env_kwargs) -> EvalRow:
    """Run the scripted agent for ``episodes`` seeded episodes (seeds seed..seed+episodes-1)."""
    env = gym.make(env_id, faults=profile, **env_kwargs)
    agent = scripted_agent_for(env_id)
    try:
        runs = [run_episode(env, agent, seed=seed + i) for i in range(episodes)]
    finally:
        env.close()
    return EvalRow(env_id=env_id, profile=profile, episodes=episodes,
                   success_rate=float(np.mean([r.success for r in runs])),
                   mean_tool_calls=float(np.mean([r.tool_calls for r in runs])),
                   mean_clock_s=float(np.mean([r.elapsed_s for r in runs])),
                   faults=sum(r.faults for r in runs), infra_failures=sum(r.infra_failure for r in runs))


def format_table(rows: Iterable[EvalRow]) -> str:
    """A fixed-width text table of evaluation rows."""
    header = f"{'env':<22} {'profile':<10} {'episodes':>8} {'success':>8} {'tool calls':>10} {'clock s':>9} {'faults':>7} {'infra fail':>10}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.env_id:<22} {r.profile:<10} {r.episodes:>8} {r.success_rate:>8.1%} {r.mean_tool_calls:>10.2f} "
                     f"{r.mean_clock_s:>9.2f} {r.faults:>7} {r.infra_failures:>10}")
    return "\n".join(lines)

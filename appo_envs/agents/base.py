"""The scripted-agent interface and an episode runner shared by demos, tests and data collection."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import gymnasium as gym


class ScriptedAgent(Protocol):
    """A policy that reads the env's plain task spec (it is an oracle demonstrator, not a learner)."""

    def begin(self, env: gym.Env, observation: str, info: dict[str, Any]) -> None: ...

    def act(self, observation: str) -> str: ...


@dataclass
class EpisodeSummary:
    """Outcome of one episode, with the transcript of actions and observations."""

    reward: float
    success: bool
    turns: int
    tool_calls: int
    elapsed_s: float
    faults: int
    infra_failure: bool
    truncation_reason: str | None
    steps: list[tuple[str, str]] = field(default_factory=list)  # (action, observation)


def run_episode(env: gym.Env, agent: ScriptedAgent, seed: int | None = None,
                options: dict[str, Any] | None = None) -> EpisodeSummary:
    """Play one episode of ``agent`` in ``env`` from ``reset(seed=seed)`` to the end."""
    obs, info = env.reset(seed=seed, options=options)
    agent.begin(env, obs, info)
    steps: list[tuple[str, str]] = []
    total, calls, faults = 0.0, 0, 0
    while True:
        action = agent.act(obs)
        obs, reward, terminated, truncated, info = env.step(action)
        steps.append((action, obs))
        total += reward
        calls += len(info["tool_calls"])
        faults += len(info["faults"])
        if terminated or truncated:
            return EpisodeSummary(reward=total, success=bool(info["success"]), turns=info["turn"], tool_calls=calls,
                                  elapsed_s=info["elapsed_s"], faults=faults, infra_failure=info["infra_failure"],
                                  truncation_reason=info.get("truncation_reason"), steps=steps)

"""Success rate of a policy on seeded episodes, sampled with the rollout engine (no training)."""
from __future__ import annotations

from typing import Any, Mapping

import gymnasium as gym
import numpy as np
import torch

import appo_envs  # noqa: F401
from appo_algo.policy import Policy
from appo_algo.rollout import RolloutEngine, RolloutLimits


def evaluate_policy(policy: Policy, env_id: str, faults: Any, env_kwargs: Mapping[str, Any], episodes: int,
                    limits: RolloutLimits, seed_offset: int = 500_000, batch: int = 16, seed: int = 0
                    ) -> dict[str, float]:
    """Mean success / reward / tool calls over ``episodes`` prompts with seeds ``seed_offset..``, sampled at ``limits.temperature``."""
    limits = RolloutLimits(**{**limits.__dict__, "keep_branch_state": False})
    engine = RolloutEngine(policy, limits)
    envs = [gym.make(env_id, faults=faults, **dict(env_kwargs)) for _ in range(min(batch, episodes))]
    gen = torch.Generator(device=policy.device).manual_seed(seed)
    results = []
    try:
        for start in range(0, episodes, len(envs)):
            seeds = list(range(seed_offset + start, seed_offset + min(start + len(envs), episodes)))
            results += engine.rollout(envs[:len(seeds)], seeds, list(range(len(seeds))), gen)
    finally:
        engine.close()
        for env in envs:
            env.close()
    return {"success_rate": float(np.mean([e.success for e in results])),
            "reward_mean": float(np.mean([e.reward for e in results])),
            "tool_calls_mean": float(np.mean([e.tool_calls for e in results])),
            "generated_tokens_mean": float(np.mean([e.generated_tokens for e in results])),
            "episodes": float(len(results))}

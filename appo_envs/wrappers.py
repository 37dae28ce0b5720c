"""Helpers that act through Gymnasium's wrapper stack."""
from __future__ import annotations

import copy

import gymnasium as gym

from appo_envs.core import ToolEnv


def fork_env(env: gym.Env) -> gym.Env:
    """Fork an env built by ``gym.make``: the wrapper stack is copied around a forked inner env."""
    if isinstance(env, ToolEnv):
        return env.fork()
    if not isinstance(env, gym.Wrapper):
        raise TypeError(f"fork_env needs a ToolEnv or a wrapper around one, got {type(env).__name__}")
    clone = copy.copy(env)
    # Wrapper bookkeeping (step counters, episode statistics) must not be shared either.
    clone.__dict__.update({k: copy.deepcopy(v) for k, v in env.__dict__.items() if k != "env"})
    clone.env = fork_env(env.env)
    return clone

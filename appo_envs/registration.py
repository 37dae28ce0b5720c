"""Gymnasium registration of the suite's environments (run on ``import appo_envs``)."""
from __future__ import annotations

import gymnasium as gym

# id -> (entry point, one-line description shown by ``appo envs``)
ENVIRONMENTS: dict[str, tuple[str, str]] = {
    "appo/CodeExec-v0": ("appo_envs.envs.codeexec:CodeExecEnv",
                         "computation problems solved with a sandboxed python tool; reward 1/0 exact match"),
    "appo/Search-v0": ("appo_envs.envs.search:SearchEnv",
                       "1-3 hop questions about a generated fictional world via a BM25 search service; reward 1/0 EM"),
    "appo/API-v0": ("appo_envs.envs.api:ApiEnv",
                    "customer requests on a stateful shop REST API (per-episode session); reward 1/0 final data = gold"),
    "appo/Mixed-v0": ("appo_envs.envs.mixed:MixedEnv",
                      "search two facts, compute with python, write the result via the API; reward 1/0 final data"),
}


def register_all() -> None:
    """Register every env id once; safe to call repeatedly."""
    for env_id, (entry_point, _) in ENVIRONMENTS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point, disable_env_checker=False)

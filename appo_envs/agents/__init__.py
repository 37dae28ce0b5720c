"""Scripted agents: reference policies for demos, tests, warm-start data and baselines."""
from appo_envs.agents.base import EpisodeSummary, ScriptedAgent, run_episode
from appo_envs.agents.api import ScriptedApiAgent
from appo_envs.agents.codeexec import ScriptedCodeAgent
from appo_envs.agents.mixed import ScriptedMixedAgent
from appo_envs.agents.search import ScriptedSearchAgent

# env id -> scripted agent class
SCRIPTED_AGENTS: dict[str, type[ScriptedAgent]] = {
    "appo/CodeExec-v0": ScriptedCodeAgent,
    "appo/Search-v0": ScriptedSearchAgent,
    "appo/API-v0": ScriptedApiAgent,
    "appo/Mixed-v0": ScriptedMixedAgent,
}


def scripted_agent_for(env_id: str) -> ScriptedAgent:
    """A fresh scripted agent for ``env_id``."""
    try:
        return SCRIPTED_AGENTS[env_id]()
    except KeyError:
        raise ValueError(f"no scripted agent for {env_id!r}; available: {sorted(SCRIPTED_AGENTS)}") from None


__all__ = ["EpisodeSummary", "SCRIPTED_AGENTS", "ScriptedAgent", "ScriptedApiAgent", "ScriptedCodeAgent",
           "ScriptedMixedAgent", "ScriptedSearchAgent", "run_episode", "scripted_agent_for"]

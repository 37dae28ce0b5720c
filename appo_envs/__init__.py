"""Gymnasium text environments whose tools really run, with seeded, replayable faults.

``import appo_envs`` registers the ``appo/*`` ids: ``gym.make("appo/CodeExec-v0", faults="flaky")``.
"""
from appo_envs.checks import check_fault_env
from appo_envs.core import Budgets, Task, ToolEnv
from appo_envs.faults import FaultProfile, resolve_profile
from appo_envs.registration import ENVIRONMENTS, register_all
from appo_envs.spaces import UnicodeText
from appo_envs.toolcalls import parse_turn, render_answer, render_tool_call
from appo_envs.wrappers import fork_env

register_all()

__all__ = [
    "Budgets", "check_fault_env", "ENVIRONMENTS", "FaultProfile", "Task", "ToolEnv", "UnicodeText", "fork_env", "parse_turn",
    "register_all", "render_answer", "render_tool_call", "resolve_profile",
]

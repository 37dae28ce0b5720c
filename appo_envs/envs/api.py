"""``appo/API-v0``: customer-service requests carried out through the shop's REST API (tau-bench style).

Each episode gets its own session on the API service (an embedded server on 127.0.0.1 by
default, or ``api_url`` + ``api_admin_key``), holding a seeded shop. Reward: 1.0 when,
at the final ``<answer>``, the session's data equal the gold outcome (the fixture with the
intended writes applied once) in every table, else 0.0; ``info["checks"]`` says per table
"ok" or the first difference, ``info["failed_check"]`` the first failing one. The answer
text itself is not graded. ``fork()`` copies the session's data to a new session.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, Mapping

import numpy as np

from sandboxes.services import ServiceHandle, connect

from appo_envs.core import Budgets, Task, ToolEnv
from appo_envs.envs.search import with_default_budgets
from appo_envs.tasks.api import GradedTask, check_intent_request, compare_outcome, generate_api_task, gold_outcome
from appo_envs.tools import ApiTool, Tool


def connect_api(url: str | None, admin_key: str | None) -> ServiceHandle:
    """The API service: embedded unless ``url`` (which then needs ``admin_key``) is given."""
    return connect("api", url, admin_key)


def open_episode(tool: ApiTool, task: GradedTask) -> None:
    """Give the episode a fresh session holding the task's shop, and work out the gold outcome."""
    tool.open_session(task.fixture)
    task.gold = gold_outcome(tool.admin, task.fixture, task.writes)


def grade_session(tool: ApiTool, task: GradedTask) -> tuple[bool, dict[str, Any]]:
    """Whether the session's data equal the gold outcome, with the per-table checks for info."""
    checks = compare_outcome(tool.snapshot(), task.gold)
    failed = next((problem for problem in checks.values() if problem != "ok"), None)
    return failed is None, {"checks": checks, "failed_check": failed}


class ApiEnv(ToolEnv):
    """Carry out a customer's request (reads and writes) on the shop API; graded on the final data."""

    system_intro = ("You are a customer-service agent for an online shop. Use the api tool to look up what you "
                    "need and to make exactly the changes the customer asks for, no more. Give every write an "
                    "idempotency_key and reuse it if you retry that write.")
    default_budgets = {"max_turns": 16, "max_tool_calls": 32}

    def __init__(self, intents: list[str] | None = None, n_intents: int | None = None, api_url: str | None = None,
                 api_admin_key: str | None = None, budgets: Budgets | Mapping[str, Any] | None = None, **kwargs: Any):
        self.intents, self.n_intents = check_intent_request(n_intents, intents), n_intents
        self.api_service = connect_api(api_url, api_admin_key)
        super().__init__(budgets=with_default_budgets(budgets, self.default_budgets), **kwargs)

    def _build_tools(self) -> dict[str, Tool]:
        return {"api": ApiTool(self.api_service)}

    def _new_task(self, rng: np.random.Generator, options: Mapping[str, Any]) -> Task:
        task = generate_api_task(rng, options.get("n_intents", self.n_intents), options.get("intents", self.intents))
        open_episode(self.tools["api"], task)
        return Task(task_id=task.task_id, question=task.question, data=task)

    def _score(self, task: Task, answer: str) -> tuple[float, dict[str, Any]]:
        ok, extra = grade_session(self.tools["api"], task.data)
        return (1.0 if ok else 0.0), extra

    def task_spec(self) -> dict[str, Any]:
        """The current task as plain data (used by scripted agents and analysis, never shown to the agent)."""
        return asdict(self.state.task.data)

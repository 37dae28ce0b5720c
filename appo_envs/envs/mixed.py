"""``appo/Mixed-v0``: find facts by ``search``, compute with ``python``, write the result through ``api``.

One long episode uses all three tools: two facts from the encyclopedia (1-2 documents
each), a computation that is tedious by hand, then a goodwill credit issued on the shop
API. Reward: 1.0 when, at the final ``<answer>``, the session's data equal the gold outcome
(exactly that credit, once), else 0.0; ``info`` carries the API env's ``checks`` and
``failed_check`` plus ``expected`` (the amount) and ``answer_matches`` (whether the answer
states it; informative, not graded). Services as in Search-v0 and API-v0; the python
tool as in CodeExec-v0.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, Mapping

import numpy as np

from appo_envs.core import Budgets, Task, ToolEnv
from appo_envs.envs.api import connect_api, grade_session, open_episode
from appo_envs.envs.search import connect_search, with_default_budgets
from appo_envs.tasks.mixed import FORMULAS, generate_mixed_task
from appo_envs.tasks.search import normalize_answer
from appo_envs.tools import ApiTool, PythonTool, SearchTool, Tool


class MixedEnv(ToolEnv):
    """Search two facts, compute an amount with Python, and credit it to a customer through the API."""

    system_intro = ("You are an operations agent. Facts about the fictional world come only from the search tool "
                    "(one entity name per query); do arithmetic with the python tool; change the shop only "
                    "through the api tool, giving every write an idempotency_key that you reuse when you retry it.")
    default_budgets = {"max_turns": 24, "max_tool_calls": 48}

    def __init__(self, formula: str | None = None, search_url: str | None = None, api_url: str | None = None,
                 api_admin_key: str | None = None, sandbox: str = "process",
                 sandbox_options: dict[str, Any] | None = None,
                 budgets: Budgets | Mapping[str, Any] | None = None, **kwargs: Any):
        if formula is not None and formula not in FORMULAS:
            raise ValueError(f"unknown formula {formula!r}; formulas: {sorted(FORMULAS)}")
        self.formula = formula
        self.sandbox, self.sandbox_options = sandbox, dict(sandbox_options or {})
        self.search_service, self.corpus = connect_search(search_url)
        self.api_service = connect_api(api_url, api_admin_key)
        super().__init__(budgets=with_default_budgets(budgets, self.default_budgets), **kwargs)

    def _build_tools(self) -> dict[str, Tool]:
        return {"search": SearchTool(self.search_service), "python": PythonTool(self.sandbox, self.sandbox_options),
                "api": ApiTool(self.api_service)}

    def _new_task(self, rng: np.random.Generator, options: Mapping[str, Any]) -> Task:
        task = generate_mixed_task(rng, self.corpus, options.get("formula", self.formula))
        open_episode(self.tools["api"], task)
        return Task(task_id=task.task_id, question=task.question, data=task)

    def _score(self, task: Task, answer: str) -> tuple[float, dict[str, Any]]:
        ok, extra = grade_session(self.tools["api"], task.data)
        expected = str(task.data.amount_cents)
        extra.update(expected=expected, answer_matches=normalize_answer(answer) == expected)
        return (1.0 if ok else 0.0), extra

    def task_spec(self) -> dict[str, Any]:
        """The current task as plain data (used by scripted agents and analysis, never shown to the agent)."""
        return asdict(self.state.task.data)

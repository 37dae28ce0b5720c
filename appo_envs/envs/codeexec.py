"""``appo/CodeExec-v0``: computation problems solved with a sandboxed ``python`` tool.

Reward: 1.0 when the final ``<answer>`` equals the reference after
:func:`appo_envs.tasks.codeexec.normalize_answer`, else 0.0; no partial credit, no reward
for tool use. ``difficulty`` (make kwarg, or ``options["difficulty"]`` per reset) is one of
easy/medium/hard; ``family`` restricts the problem family.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, Mapping

import numpy as np

from appo_envs.core import Task, ToolEnv
from appo_envs.tasks.codeexec import DIFFICULTIES, FAMILIES, check_answer, generate_code_task
from appo_envs.tools import PythonTool, Tool


class CodeExecEnv(ToolEnv):
    """Solve a generated problem that needs exact computation; answer once."""

    system_intro = ("You solve computational problems exactly. Use the python tool to compute; "
                    "do not guess. Give only the final value inside <answer></answer>.")

    def __init__(self, difficulty: str = "medium", family: str | None = None, sandbox: str = "process",
                 sandbox_options: dict[str, Any] | None = None, **kwargs: Any):
        if difficulty not in DIFFICULTIES:
            raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
        if family is not None and family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}; families: {sorted(FAMILIES)}")
        self.difficulty, self.family = difficulty, family
        self.sandbox, self.sandbox_options = sandbox, dict(sandbox_options or {})
        super().__init__(**kwargs)

    def _build_tools(self) -> dict[str, Tool]:
        return {"python": PythonTool(self.sandbox, self.sandbox_options)}

    def _new_task(self, rng: np.random.Generator, options: Mapping[str, Any]) -> Task:
        code_task = generate_code_task(rng, options.get("difficulty", self.difficulty),
                                       options.get("family", self.family))
        return Task(task_id=code_task.task_id, question=code_task.question, data=code_task)

    def _score(self, task: Task, answer: str) -> tuple[float, dict[str, Any]]:
        correct = check_answer(task.data, answer)
        return (1.0 if correct else 0.0), {"expected": task.data.answer, "family": task.data.family}

    def task_spec(self) -> dict[str, Any]:
        """The current task as plain data (used by scripted agents and analysis, never shown to the agent)."""
        return asdict(self.state.task.data)

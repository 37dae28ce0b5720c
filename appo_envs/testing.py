"""A free, instant tool env for testing and measuring the fault machinery without a sandbox or service.

``EchoEnv`` asks for a secret word and offers one ``echo`` tool; every fault kind that does not
need a real backend can hit it. Tests use it for statistics over thousands of calls, and
``scripts/bench_faults.py`` for the per-call cost of fault injection.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from appo_envs.core import Task, ToolEnv
from appo_envs.tools import ToolOutput


class EchoTool:
    """Returns its text argument at no cost on the env clock."""

    name = "echo"
    description = "Echo the given text."
    parameters = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}

    handles_faults = False

    def call(self, arguments: dict[str, Any], timeout_s: float, fault: Any = None) -> ToolOutput:
        return ToolOutput("ok", arguments["text"], clock_s=0.0)

    def reset(self, seed: int) -> None:
        pass

    def fork(self) -> "EchoTool":
        return EchoTool()

    def close(self) -> None:
        pass


class EchoEnv(ToolEnv):
    """Answer with the secret word; the echo tool is free and instant."""

    def _build_tools(self):
        return {"echo": EchoTool()}

    def _new_task(self, rng: np.random.Generator, options: Mapping[str, Any]) -> Task:
        word = "".join(rng.choice(list("abcdefgh"), size=6))
        return Task(task_id=f"echo-{word}", question=f"Answer with the word {word}.", data=word)

    def _score(self, task: Task, answer: str):
        return float(answer.strip() == task.data), {"expected": task.data}

"""The script driver the Search, API and Mixed agents share.

A :class:`ScriptedToolAgent` writes its policy as a generator: it yields one tool call per
turn and receives the observation back, so a multi-step plan with retries reads top to bottom.
"""
from __future__ import annotations

from typing import Any, Callable, Generator, TypeVar

import gymnasium as gym

from appo_envs.toolcalls import parse_tool_responses, render_answer, render_tool_call

T = TypeVar("T")
# A script yields actions, receives observations, and returns the final answer.
Script = Generator[str, str, str]


class GiveUp(Exception):
    """A step kept failing; the agent ends the episode with an answer saying so."""


class ScriptedToolAgent:
    """Drives ``script(spec)``; ``call`` makes one tool call and retries failures up to ``max_retries`` times."""

    def __init__(self, max_retries: int = 4):
        self.max_retries = max_retries
        self._script: Script | None = None
        self._started = False

    def script(self, spec: dict[str, Any]) -> Script:
        raise NotImplementedError

    def begin(self, env: gym.Env, observation: str, info: dict[str, Any]) -> None:
        self._script = self.script(env.unwrapped.task_spec())
        self._started = False

    def act(self, observation: str) -> str:
        if self._script is None:
            raise RuntimeError("call begin() before act()")
        try:
            if not self._started:
                self._started = True
                return next(self._script)
            return self._script.send(observation)
        except StopIteration as done:
            return render_answer(done.value)
        except GiveUp as e:
            return render_answer(f"I could not finish: {e}")

    def call(self, name: str, arguments: dict[str, Any], accept: Callable[[str], T | None],
             fatal: Callable[[str], bool] = lambda content: False,
             retry_arguments: dict[str, Any] | None = None) -> Generator[str, str, T]:
        """Call ``name`` until ``accept(content)`` of an ok response gives a value; retry other outcomes.

        ``fatal(content)`` marks a failure that retrying cannot fix; ``retry_arguments``
        replace the arguments after the first attempt.
        """
        for attempt in range(self.max_retries + 1):
            args = arguments if attempt == 0 or retry_arguments is None else retry_arguments
            observation = yield render_tool_call(name, args)
            responses = parse_tool_responses(observation)
            if responses:
                _, status, content = responses[-1]
                if status == "ok":
                    value = accept(content)
                    if value is not None:
                        return value
                elif fatal(content):
                    raise GiveUp(f"{name} refused the call: {content[:200]}")
        raise GiveUp(f"{name} kept failing after {self.max_retries + 1} attempts")

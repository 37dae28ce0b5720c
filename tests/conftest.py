"""Shared fixtures: a cheap in-process tool env for the core, and the env-module fixtures (``ENV_ID``)."""
from __future__ import annotations

from typing import Any, Mapping

import gymnasium as gym
import numpy as np
import pytest
from env_contract import FUZZ_BUDGETS, FUZZ_FAULTS

import appo_envs  # noqa: F401
from appo_envs.core import Task, ToolEnv
from appo_envs.tools import ToolOutput


class EchoTool:
    """Returns its text argument; lets core tests make thousands of calls without a sandbox."""

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


@pytest.fixture
def echo_env_factory():
    envs: list[EchoEnv] = []

    def make(**kwargs) -> EchoEnv:
        env = EchoEnv(**kwargs)
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.close()


@pytest.fixture
def make_env(request):
    """``make(**kwargs)``: ``gym.make(ENV_ID, **kwargs)`` for the test module's ``ENV_ID``, closed after the test."""
    envs = []

    def make(**kwargs):
        env = gym.make(request.module.ENV_ID, **kwargs)
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.close()


@pytest.fixture(scope="module")
def fuzz_env(request):
    """The module's env (unwrapped, so malformed actions reach it) under every fault kind, reset once."""
    env = gym.make(request.module.ENV_ID, faults=FUZZ_FAULTS, budgets=FUZZ_BUDGETS).unwrapped
    env.reset(seed=0)
    yield env
    env.close()

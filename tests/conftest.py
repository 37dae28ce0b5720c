"""Shared fixtures: the instant echo env for the core, and the env-module fixtures (``ENV_ID``)."""
from __future__ import annotations

import gymnasium as gym
import pytest
from env_contract import FUZZ_BUDGETS, FUZZ_FAULTS

import appo_envs  # noqa: F401
from appo_envs.testing import EchoEnv


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

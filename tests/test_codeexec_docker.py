"""CodeExec switched to the docker backend by one config value (``sandbox="docker"``), and the python
tool's session mode and shared warm workers on both backends."""
from __future__ import annotations

import os

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import appo_envs
from appo_envs.agents import ScriptedCodeAgent, run_episode
from appo_envs.toolcalls import render_answer, render_tool_call
from env_contract import play
from sandbox_backends import BACKENDS, docker_problem, namespace_members, pid_namespace, require

UNICODE_PRINT = render_tool_call("python", {"code": "print('héllo ✓ 日本語 🚀', 6*7)"})
ERROR_CALL = render_tool_call("python", {"code": "def f():\n    return 1 / 0\nf()"})
ACTIONS = [UNICODE_PRINT, ERROR_CALL, "no tags here",
           render_tool_call("python", {"code": "import random; print(3)"}) * 2, render_answer("7")]


@pytest.fixture
def make_env():
    envs = []

    def make(**kwargs):
        require(kwargs.get("sandbox", "process"))
        env = gym.make("appo/CodeExec-v0", **kwargs)
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.close()


def _observations(transcript):
    return [step[0] for step in transcript]


@pytest.mark.parametrize("profile", ["clean", "degraded"])
def test_check_env_on_docker(make_env, profile):
    check_env(make_env(sandbox="docker", faults=profile).unwrapped, skip_render_check=True)


def test_docker_runs_the_agents_code(make_env):
    env = make_env(sandbox="docker", faults="clean")
    env.reset(seed=0)
    obs, *_ = env.step(UNICODE_PRINT)
    assert "[python ok]" in obs and "héllo ✓ 日本語 🚀 42" in obs


def test_same_episode_on_both_backends_reads_the_same(make_env):
    """Same seed, same actions: identical observations, rewards and infos (tracebacks included)."""
    on_process = play(make_env(sandbox="process", faults="degraded"), ACTIONS, seed=11)
    on_docker = play(make_env(sandbox="docker", faults="degraded"), ACTIONS, seed=11)
    again = play(make_env(sandbox="docker", faults="degraded"), ACTIONS, seed=11)
    assert on_docker == again
    assert _observations(on_docker) == _observations(on_process)
    assert any("ZeroDivisionError" in o for o in _observations(on_docker))


def test_fork_mid_episode_on_docker(make_env):
    env = make_env(sandbox="docker", faults="degraded", budgets={"max_turns": 20})
    env.reset(seed=5)
    env.step(UNICODE_PRINT)
    child = appo_envs.fork_env(env)
    child_out = [child.step(a) for a in ACTIONS[:4]]
    parent_out = [env.step(a) for a in ACTIONS[:4]]
    assert child_out == parent_out
    child.close()


def test_scripted_agent_solves_clean_tasks_on_docker(make_env):
    env = make_env(sandbox="docker", faults="clean")
    results = [run_episode(env, ScriptedCodeAgent(), seed=s) for s in range(10)]
    assert np.mean([r.success for r in results]) >= 0.9


@pytest.mark.parametrize("backend", BACKENDS)
def test_session_mode_keeps_state_across_steps_forks_and_resets(make_env, backend):
    env = make_env(sandbox=backend, sandbox_options={"session": True}, faults="clean", budgets={"max_turns": 20})
    env.reset(seed=1)
    assert "persist" in env.unwrapped.tools["python"].description
    env.step(render_tool_call("python", {"code": "total = 40"}))
    child = appo_envs.fork_env(env)
    env.step(render_tool_call("python", {"code": "total += 2"}))
    show = render_tool_call("python", {"code": "print(total)"})
    assert "42" in env.step(show)[0]
    assert "40" in child.step(show)[0]  # the fork replayed the cells up to the fork point only
    child.close()
    env.reset(seed=2)
    assert "NameError" in env.step(show)[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_stateless_tools_share_warm_workers_and_release_them(make_env, backend):
    envs = [make_env(sandbox=backend, faults="clean", budgets={"max_turns": 20}) for _ in range(3)]
    for env in envs:
        env.reset(seed=0)
        env.step(UNICODE_PRINT)
    forks = [appo_envs.fork_env(envs[0]) for _ in range(5)]
    for fork in forks:
        assert "héllo" in fork.step(UNICODE_PRINT)[0]
    tool = envs[0].unwrapped.tools["python"]
    sandbox = tool._get_sandbox()
    assert all(e.unwrapped.tools["python"]._get_sandbox() is sandbox for e in envs + forks)
    namespaces = {pid_namespace(p) for p in sandbox.worker_pids()}
    for env in envs + forks:
        env.close()
    assert namespace_members(namespaces) == set()
    if backend == "docker" and docker_problem() is None:
        from sandboxes.docker_backend import OWNER_PID, connect
        assert connect().api.containers(all=True, filters={"label": f"{OWNER_PID}={os.getpid()}"}) == []

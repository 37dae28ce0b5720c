"""CodeExec through the Gymnasium API: checker, vector envs, determinism, fork, fuzzing, scripted agent."""
import gymnasium as gym
import numpy as np
import pytest
from env_contract import assert_fork_future, assert_seed_determinism, fuzz_step
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import appo_envs
from appo_envs.agents import ScriptedCodeAgent, run_episode
from appo_envs.toolcalls import render_answer, render_tool_call

ENV_ID = "appo/CodeExec-v0"
UNICODE_PRINT = render_tool_call("python", {"code": "print('héllo ✓ 日本語 🚀', 6*7)"})


def test_make_with_module_prefix_and_reset_info(make_env):
    env = make_env(faults="flaky", difficulty="easy")
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    assert {"task_id", "tools", "messages", "tool_calls", "faults", "infra_failure", "elapsed_s"} <= set(info)
    assert info["tools"][0]["function"]["name"] == "python"
    assert [m["role"] for m in info["messages"]] == ["system", "user"]
    env2 = gym.make("appo_envs:appo/CodeExec-v0")
    env2.close()


def test_bad_constructor_arguments_say_what_to_do():
    with pytest.raises(ValueError, match="easy"):
        gym.make("appo/CodeExec-v0", difficulty="impossible")
    with pytest.raises(ValueError, match="presets"):
        gym.make("appo/CodeExec-v0", faults="typo")
    with pytest.raises(ValueError, match="unknown budget"):
        gym.make("appo/CodeExec-v0", budgets={"max_turn": 3})
    with pytest.raises(ValueError, match="known backends: docker, process"):
        gym.make("appo/CodeExec-v0", sandbox="dokcer")


def test_async_vector_env_with_non_ascii_observations():
    envs = gym.make_vec("appo/CodeExec-v0", num_envs=4, vectorization_mode="async")
    try:
        obs, info = envs.reset(seed=[1, 2, 3, 4])
        assert len(obs) == 4 and len(set(obs)) > 1
        obs, rew, term, trunc, info = envs.step((UNICODE_PRINT,) * 4)
        for o in obs:
            assert "héllo ✓ 日本語 🚀 42" in o
    finally:
        envs.close()


ACTIONS = [UNICODE_PRINT, "no tags here", render_tool_call("python", {"code": "import random; print(3)"}) * 2,
           '<tool_call>{"name": "nope"}</tool_call>', render_answer("7")]


def test_same_seed_same_everything_different_seed_differs(make_env):
    assert_seed_determinism(make_env, ACTIONS, faults="degraded")


def test_fork_mid_episode_has_identical_independent_future(make_env):
    env = make_env(faults="degraded", budgets={"max_turns": 20})
    env.reset(seed=5)
    env.step(UNICODE_PRINT)
    assert_fork_future(env, ACTIONS[:4]).close()


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(
    st.text(max_size=300),
    st.text(alphabet="<>/{}\":,[] tool_callanswer", max_size=200),
    st.builds(lambda s: "<tool_call>" + s + "</tool_call>", st.text(max_size=100)),
    st.builds(lambda n, a: f'<tool_call>{{"name": {n!r}, "arguments": {a}}}</tool_call>',
              st.text(max_size=10), st.sampled_from(["{}", "[]", "3", '{"code": 5}', '{"x": "y"}', "{"])),
    st.builds(lambda s: "<answer>" + s, st.text(max_size=50)),
))
def test_arbitrary_actions_never_raise(fuzz_env, action):
    fuzz_step(fuzz_env, action)


def test_huge_and_non_string_actions(make_env):
    env = make_env().unwrapped
    env.reset(seed=0)
    obs, rew, term, trunc, _ = env.step("x" * 1_000_000)
    assert "limit" in obs and rew == 0.0 and env.observation_space.contains(obs)
    obs, *_ = env.step(None)
    assert "must be a string" in obs


def test_budgets_truncate_with_reason(make_env):
    env = make_env(budgets={"max_turns": 2})
    env.reset(seed=0)
    env.step("hmm")
    _, _, term, trunc, info = env.step("hmm")
    assert trunc and not term and info["truncation_reason"] == "max_turns"


def test_scripted_agent_clean_and_degraded(make_env):
    clean_env = make_env(faults="clean")
    clean = [run_episode(clean_env, ScriptedCodeAgent(), seed=s) for s in range(20)]
    assert np.mean([r.success for r in clean]) >= 0.95
    degraded_env = make_env(faults="degraded")
    degraded = [run_episode(degraded_env, ScriptedCodeAgent(), seed=s) for s in range(40)]
    rate = np.mean([r.success for r in degraded])
    assert 0 < rate < 1.0
    assert any(r.infra_failure for r in degraded)
    assert sum(r.faults for r in degraded) > 0

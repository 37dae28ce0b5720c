"""Every registered env through ``gym.make_vec`` (sync and async, 4 sub-envs, non-ASCII text).

Seeds: ``reset(seed=s)`` seeds sub-env ``i`` with ``s + i`` (Gymnasium's rule; a list seeds
each sub-env explicitly); later resets, including autoresets, draw the next episode seed
from each sub-env's own generator, so a vector run replays exactly. Autoreset mode is
``NEXT_STEP`` (declared in ``ToolEnv.metadata``): the step after an episode ends resets that
sub-env, ignores its action and returns the new prompt with reward 0.
"""
import gymnasium as gym
import pytest
from gymnasium.vector import AutoresetMode

import appo_envs
from appo_envs.toolcalls import render_answer, render_tool_call

N = 4
UNICODE_TOOL = "инструмент_日本語_🚀"  # an unknown tool name: every env echoes it in its error observation
MODES = ["sync", "async"]


def _single_env_trace(env_id: str, seed: int) -> tuple[str, str, str]:
    """(first prompt, observation after the unicode call, prompt after the answer) of one plain env."""
    env = gym.make(env_id)
    try:
        first, _ = env.reset(seed=seed)
        obs, *_ = env.step(render_tool_call(UNICODE_TOOL, {"x": "ß"}))
        env.step(render_answer("?"))
        second, _ = env.reset()
        return first, obs, second
    finally:
        env.close()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("env_id", sorted(appo_envs.ENVIRONMENTS))
def test_make_vec_seeds_unicode_and_next_step_autoreset(env_id, mode):
    envs = gym.make_vec(env_id, num_envs=N, vectorization_mode=mode)
    try:
        assert envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
        prompts, _ = envs.reset(seed=100)
        obs, rew, term, trunc, info = envs.step((render_tool_call(UNICODE_TOOL, {"x": "ß"}),) * N)
        assert all(UNICODE_TOOL in o for o in obs) and not any(term)
        _, rew, term, trunc, _ = envs.step((render_answer("?"),) * N)
        assert all(term)
        reset_prompts, rew, term, trunc, _ = envs.step(("ignored on autoreset",) * N)
        assert not any(term) and not any(trunc) and list(rew) == [0.0] * N
        prompts, obs, reset_prompts = tuple(prompts), tuple(obs), tuple(reset_prompts)  # copy shared-memory views
    finally:
        envs.close()
    expected = [_single_env_trace(env_id, 100 + i) for i in range(N)]
    assert list(prompts) == [e[0] for e in expected]  # sub-env i was reset with seed 100 + i
    assert list(obs) == [e[1] for e in expected]
    assert list(reset_prompts) == [e[2] for e in expected]  # the autoreset drew the same seed a plain reset() would


def test_async_codeexec_real_tool_output_non_ascii():
    envs = gym.make_vec("appo/CodeExec-v0", num_envs=N, vectorization_mode="async")
    try:
        envs.reset(seed=[7, 8, 9, 10])
        obs, *_ = envs.step((render_tool_call("python", {"code": "print('héllo ✓ 日本語 🚀', 6*7)"}),) * N)
        assert all("héllo ✓ 日本語 🚀 42" in o for o in obs)
    finally:
        envs.close()

"""The macro-action view: SB3's env checker, determinism, honest macros, masks, and a PPO that learns to retry."""
import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from sb3_contrib import MaskablePPO
from stable_baselines3.common.env_checker import check_env
from stable_baselines3.common.env_util import make_vec_env

from appo_envs.macro import FEATURE_NAMES, MACRO_PLANS, MACROS, MacroActionEnv

A = {name: i for i, name in enumerate(MACROS)}
F = {name: i for i, name in enumerate(FEATURE_NAMES)}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def make_macro():
    envs = []

    def make(env_id="appo/CodeExec-v0", **kwargs):
        env = MacroActionEnv(env_id, **kwargs)
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.close()


@pytest.mark.parametrize("profile", ["clean", "degraded"])
@pytest.mark.parametrize("env_id", sorted(MACRO_PLANS))
def test_sb3_check_env_passes(make_macro, env_id, profile):
    env = make_macro(env_id, faults=profile)
    check_env(env, warn=True)
    assert env.observation_space.shape == (len(FEATURE_NAMES),)
    assert env.action_space.n == len(MACROS)


def _trace(env, seed, actions):
    obs, info = env.reset(seed=seed)
    out = [(obs.tolist(), info["task_id"])]
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        out.append((obs.tolist(), r, term, trunc, info["elapsed_s"], info["macro_applicable"]))
        if term or trunc:
            break
    return out


@pytest.mark.parametrize("env_id", sorted(MACRO_PLANS))
def test_same_seed_same_trace_other_seed_differs(make_macro, env_id):
    actions = [A["retry"], A["advance"], A["wait_retry"], A["retry"], A["advance"], A["answer"]]
    a = _trace(make_macro(env_id, faults="degraded"), 3, actions)
    b = _trace(make_macro(env_id, faults="degraded"), 3, actions)
    assert a == b
    others = [_trace(make_macro(env_id, faults="degraded"), s, actions) for s in (4, 5)]
    assert any(o != a for o in others)


def test_masks_follow_progress_and_inapplicable_macro_costs_a_turn(make_macro):
    env = make_macro(faults="clean")
    obs, info = env.reset(seed=0)
    assert info["action_mask"].tolist() == [True, False, False, True, True]
    assert obs[F["last_status=none"]] == 1 and obs[F["has_candidate"]] == 0
    obs, r, term, trunc, info = env.step(A["retry"])  # nothing to retry yet
    assert not info["macro_applicable"] and obs[F["calls_frac"]] == 0 and obs[F["turn_frac"]] > 0
    obs, r, term, trunc, info = env.step(A["advance"])
    assert obs[F["last_status=ok"]] == 1 and obs[F["has_candidate"]] == 1 and obs[F["plan_complete"]] == 1
    assert env.action_masks().tolist() == [False, True, True, True, True]  # the plan is done: answer (or re-run)
    obs, r, term, trunc, info = env.step(A["answer"])
    assert term and r == 1.0 and info["success"]


def _first_call_fails(env, seeds):
    """Seeds whose first solution run hits an injected error."""
    hits = []
    for seed in seeds:
        env.reset(seed=seed)
        obs, *_ = env.step(A["advance"])
        if obs[F["last_status=ok"]] == 0:
            hits.append(seed)
    return hits


def test_retry_is_what_recovers_from_a_failed_call(make_macro):
    env = make_macro(faults={"base": "degraded", "patience": {}})  # no user aborts: isolate the retry effect
    seeds = _first_call_fails(env, range(60))
    assert len(seeds) >= 5
    answered, retried, gave_up = [], [], []
    for seed in seeds:
        for policy, out in ((["answer"], answered), (["give_up"], gave_up), (["retry"] * 6 + ["answer"], retried)):
            env.reset(seed=seed)
            obs, *_ = env.step(A["advance"])
            assert env.action_masks()[A["advance"]] == 0  # a failed step cannot be skipped over
            for name in policy:
                obs, r, term, trunc, info = env.step(A[name])
                if name == "retry" and obs[F["has_candidate"]] == 1:
                    obs, r, term, trunc, info = env.step(A["answer"])
                if term or trunc:
                    break
            out.append(info["success"])
    assert not any(answered) and not any(gave_up)  # answering without a candidate fails
    assert np.mean(retried) >= 0.9


def test_wait_retry_spends_a_turn_without_a_call(make_macro):
    env = make_macro(faults={"base": "degraded", "patience": {}})
    seed = _first_call_fails(env, range(60))[0]
    env.reset(seed=seed)
    env.step(A["advance"])
    turn_before = env.env.unwrapped.state.turn
    calls_before = env.env.unwrapped.state.n_calls
    env.step(A["wait_retry"])
    assert env.env.unwrapped.state.turn == turn_before + 2
    assert env.env.unwrapped.state.n_calls == calls_before + 1


def test_bad_inputs_say_what_to_do(make_macro):
    with pytest.raises(ValueError, match="no macro plan"):
        MacroActionEnv("appo/Nope-v0")
    env = make_macro()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="advance"):
        env.step(7)


def test_maskable_ppo_and_async_vector_env_accept_the_view():
    vec = make_vec_env(MacroActionEnv, n_envs=2, seed=0, env_kwargs={"faults": "flaky"})
    model = MaskablePPO("MlpPolicy", vec, n_steps=16, batch_size=16, seed=0, device="cpu")
    model.learn(total_timesteps=32)
    vec.close()
    envs = gym.vector.AsyncVectorEnv([lambda: MacroActionEnv(faults="flaky")] * 2)
    try:
        obs, info = envs.reset(seed=0)
        assert obs.shape == (2, len(FEATURE_NAMES)) and obs.dtype == np.float32
        obs, rew, term, trunc, info = envs.step(np.array([A["advance"], A["give_up"]]))
        assert term.tolist() == [False, True]
    finally:
        envs.close()


@pytest.mark.slow
def test_ppo_beats_random_and_learns_to_retry_under_degraded(tmp_path):
    out = tmp_path / "sweep.json"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "sb3_sweep.py"), "--envs", "appo/CodeExec-v0",
                    "--profiles", "degraded", "--steps", "8000", "--eval-episodes", "150", "--json", str(out)],
                   check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=1200)
    (row,) = json.loads(out.read_text())
    assert row["ppo"]["success"] > row["random"]["success"] + 0.3
    assert row["ppo"]["retry_rate_after_failure"] > 0.9 > row["random"]["retry_rate_after_failure"]

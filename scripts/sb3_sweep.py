"""SB3 PPO on the macro-action view of each env, per fault profile, next to the scripted agent and a random policy.

For every (env, profile) cell: train PPO on ``MacroActionEnv`` (training seeds from
``--seed``), then play the same held-out evaluation seeds with the trained policy, the
untrained policy (same initialisation), a uniform random macro policy and the env's
scripted text agent. Prints success per cell and the rate of retries (``retry`` or
``wait_retry``) at decision points right after a failed call, before and after training.

    python scripts/sb3_sweep.py --envs appo/CodeExec-v0 --profiles clean flaky degraded --steps 20000
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env

import appo_envs  # noqa: F401  (registers the env ids)
from appo_envs.agents import run_episode, scripted_agent_for
from appo_envs.macro import FEATURE_NAMES, MACRO_PLANS, MACROS, MacroActionEnv

Policy = Callable[[np.ndarray, np.ndarray], int]  # (features, action mask) -> macro index
_FAILED = [FEATURE_NAMES.index(f"last_status={s}") for s in ("error", "timeout", "other")]
_RETRIES = {MACROS.index("retry"), MACROS.index("wait_retry")}


@dataclass
class PolicyStats:
    """Success rate and retry behaviour of one policy over the evaluation seeds."""

    success: float
    decisions_after_failure: int
    retry_rate_after_failure: float


def evaluate(env: MacroActionEnv, policy: Policy, seeds: list[int]) -> PolicyStats:
    """Play one episode per seed; count retries at decisions that follow a failed call."""
    wins, after_fail, retries = 0, 0, 0
    for seed in seeds:
        obs, info = env.reset(seed=seed)
        while True:
            action = policy(obs, info["action_mask"])
            if obs[_FAILED].any():
                after_fail += 1
                retries += action in _RETRIES
            obs, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                wins += bool(info["success"])
                break
    return PolicyStats(wins / len(seeds), after_fail, retries / after_fail if after_fail else float("nan"))


def sb3_policy(model: BaseAlgorithm) -> Policy:
    """Greedy action of a trained SB3 model."""
    return lambda obs, mask: int(model.predict(obs, deterministic=True)[0])


def random_policy(seed: int) -> Policy:
    """Uniform over all macros (the untrained baseline that ignores masks, like plain PPO)."""
    rng = np.random.default_rng(seed)
    return lambda obs, mask: int(rng.integers(len(MACROS)))


def scripted_success(env_id: str, profile: str, seeds: list[int], env_kwargs: dict) -> float:
    """Success of the env's scripted text agent on the same seeds."""
    env = gym.make(env_id, faults=profile, **env_kwargs)
    try:
        return float(np.mean([run_episode(env, scripted_agent_for(env_id), seed=s).success for s in seeds]))
    finally:
        env.close()


def run_cell(env_id: str, profile: str, args: argparse.Namespace) -> dict:
    """Train and evaluate one (env, profile) cell."""
    env_kwargs = json.loads(args.env_kwargs)
    make_kwargs = {"env_id": env_id, "faults": profile, **env_kwargs}
    vec = make_vec_env(MacroActionEnv, n_envs=args.n_envs, seed=args.seed, env_kwargs=make_kwargs)
    model = PPO("MlpPolicy", vec, n_steps=args.n_steps, batch_size=args.batch_size, learning_rate=args.lr,
                ent_coef=args.ent_coef, gamma=args.gamma, seed=args.seed, verbose=0, device="cpu")
    eval_env = MacroActionEnv(**make_kwargs)
    seeds = list(range(args.eval_seed, args.eval_seed + args.eval_episodes))
    try:
        before = evaluate(eval_env, sb3_policy(model), seeds)
        t0 = time.perf_counter()
        model.learn(total_timesteps=args.steps)
        train_s = time.perf_counter() - t0
        after = evaluate(eval_env, sb3_policy(model), seeds)
        rand = evaluate(eval_env, random_policy(args.seed), seeds)
    finally:
        eval_env.close()
        vec.close()
    return {"env": env_id, "profile": profile, "train_steps": args.steps, "train_s": round(train_s, 1),
            "eval_episodes": len(seeds), "ppo": asdict(after), "untrained": asdict(before), "random": asdict(rand),
            "scripted_success": scripted_success(env_id, profile, seeds, env_kwargs)}


def print_table(rows: list[dict]) -> None:
    """One line per cell: success of each policy and the retry rate after a failed call."""
    head = (f"{'env':<20} {'profile':<9} {'PPO':>6} {'random':>7} {'scripted':>9} {'PPO/rand':>9} "
            f"{'retry|fail untrained':>21} {'retry|fail PPO':>15} {'retry|fail random':>18} {'train_s':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        ratio = r["ppo"]["success"] / r["random"]["success"] if r["random"]["success"] else float("inf")
        print(f"{r['env']:<20} {r['profile']:<9} {r['ppo']['success']:>6.3f} {r['random']['success']:>7.3f} "
              f"{r['scripted_success']:>9.3f} {ratio:>9.2f} {r['untrained']['retry_rate_after_failure']:>21.3f} "
              f"{r['ppo']['retry_rate_after_failure']:>15.3f} {r['random']['retry_rate_after_failure']:>18.3f} "
              f"{r['train_s']:>8.1f}")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=sorted(MACRO_PLANS), help="env ids with a macro plan")
    parser.add_argument("--profiles", nargs="+", default=["clean", "flaky", "degraded"])
    parser.add_argument("--env-kwargs", default="{}", help="JSON kwargs for gym.make")
    parser.add_argument("--steps", type=int, default=20_000, help="PPO timesteps (macro steps) per cell")
    parser.add_argument("--n-envs", type=int, default=4)
    parser.add_argument("--n-steps", type=int, default=256, help="PPO rollout length per sub-env")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ent-coef", type=float, default=0.01)
    parser.add_argument("--gamma", type=float, default=0.99)
    parser.add_argument("--eval-episodes", type=int, default=300)
    parser.add_argument("--eval-seed", type=int, default=1_000_000, help="first evaluation seed (disjoint from training)")
    parser.add_argument("--seed", type=int, default=0, help="PPO init, training env seeds (seed+i per sub-env)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    unknown = set(args.envs) - set(MACRO_PLANS)
    if unknown:
        parser.error(f"no macro plan for {sorted(unknown)}; available: {sorted(MACRO_PLANS)}")
    torch.set_num_threads(args.threads)
    rows = []
    for env_id in args.envs:
        for profile in args.profiles:
            rows.append(run_cell(env_id, profile, args))
            print(f"done {env_id} {profile}: PPO {rows[-1]['ppo']['success']:.3f} in {rows[-1]['train_s']} s", flush=True)
    print()
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()

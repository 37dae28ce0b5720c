"""Learning benchmark (not a test): success-rate curves of none / entropy / tool_boundary / appo at equal token budgets.

CodeExec with the ``flaky`` fault profile, the ``tiny`` preset (warm-started once, cached),
the same loop for every method: the only difference is where branches are taken
(``selector``). ``none`` is GRPO with N = M rollouts per prompt; the branching methods use
N initial rollouts and B branches per rollout with dual-group advantages. Every run
stops once it has sampled ``--token-budget`` tokens (initial rollouts + branches).

Prints, per method (mean ± std over seeds), the success rate on the same held-out prompts
(seeds 500000..) before training (the warm-start level) and after every budget fraction.
Training prompts differ per seed (``prompt_seed_offset``).

    python scripts/bench_learning.py [--token-budget 60000] [--seeds 0 1 2] [--methods none appo]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from appo_algo.config import TrainConfig
from appo_algo.policy import set_cpu_threads
from appo_algo.policy_eval import evaluate_policy
from appo_algo.presets import load_policy
from appo_algo.rollout import RolloutLimits
from appo_algo.trainer import APPOTrainer

METHODS = ("none", "entropy", "tool_boundary", "appo")


def method_config(method: str, seed: int, args: argparse.Namespace) -> TrainConfig:
    n, b = args.n, args.b
    common = {"seed": seed, "prompt_seed_offset": 100_000 * seed, "faults": "flaky", "prompts_per_step": args.prompts, "lr": args.lr,
              "log_dir": f"{args.out}/{method}-s{seed}", "steps": 10**6, "progress": False, "tensorboard": False,
              "checkpoint_every": 10**6, "stdout_every": 0, "model_options": json.loads(args.model_options),
              "env_kwargs": {**TrainConfig().env_kwargs, **json.loads(args.env_kwargs)}}
    if method == "none":
        return TrainConfig.from_dict({**common, "selector": "none", "advantage": "grpo",
                                      "rollouts_per_prompt": n * (b + 1)})
    return TrainConfig.from_dict({**common, "selector": method, "advantage": "appo", "rollouts_per_prompt": n,
                                  "branch": {"branches_per_rollout": b, "arpo_copies": 1}})


def run(cfg: TrainConfig, budget: int, bins: int, eval_episodes: int) -> dict:
    """Train until ``budget`` sampled tokens; evaluate on the held-out prompts at every bin edge."""
    trainer = APPOTrainer(cfg, log=lambda s: None)
    curve, train_success, used, edge = [], [], 0.0, 1
    t0 = time.perf_counter()
    try:
        while edge <= bins:
            m = trainer.train_step()
            used += m["rollout/sampled_tokens"] + m["branch/tokens"]
            train_success.append(m["rollout/success_rate"])
            while edge <= bins and used >= budget * edge / bins:
                curve.append(evaluate_policy(trainer.policy, cfg.env_id, cfg.faults, cfg.env_kwargs, eval_episodes,
                                             limits(cfg))["success_rate"])
                edge += 1
    finally:
        trainer.close()
    return {"curve": curve, "steps": trainer.step, "train_success": train_success,
            "seconds": time.perf_counter() - t0}


def limits(cfg: TrainConfig) -> RolloutLimits:
    return RolloutLimits(temperature=cfg.temperature, max_turn_tokens=cfg.max_turn_tokens,
                         max_episode_tokens=cfg.max_episode_tokens)


def fmt(values: list[float]) -> str:
    mean = statistics.mean(values)
    return f"{mean:.2f}±{statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--token-budget", type=int, default=60_000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--prompts", type=int, default=2, help="prompts per step")
    ap.add_argument("--n", type=int, default=4, help="initial rollouts per prompt (none uses N*(B+1))")
    ap.add_argument("--b", type=int, default=1, help="branches per rollout")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--bins", type=int, default=5)
    ap.add_argument("--eval-episodes", type=int, default=48)
    ap.add_argument("--model-options", default="{}", help="tiny preset options as JSON")
    ap.add_argument("--env-kwargs", default="{}", help="CodeExec kwargs as JSON, merged over the config's "
                    "(e.g. '{\"family\": \"collatz_steps\"}')")
    ap.add_argument("--out", default="runs/bench_learning")
    args = ap.parse_args()
    set_cpu_threads(1)

    base = method_config("appo", args.seeds[0], args)
    warm = evaluate_policy(load_policy("tiny", base.model_options, base.device, log=lambda s: None), base.env_id,
                           base.faults, base.env_kwargs, args.eval_episodes, limits(base))["success_rate"]
    results: dict[str, list[dict]] = {}
    for method in args.methods:
        for seed in args.seeds:
            r = run(method_config(method, seed, args), args.token_budget, args.bins, args.eval_episodes)
            results.setdefault(method, []).append(r)
            print(f"  {method:<14} seed {seed}: {r['steps']} steps, {r['seconds']:.0f} s, "
                  f"held-out success curve {[round(c, 2) for c in r['curve']]}", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps({"warm_start": warm, "results": results}))

    print(f"\nCodeExec flaky, tiny preset, {args.token_budget} sampled tokens per run, seeds {args.seeds}; "
          f"held-out success of the warm start: {warm:.2f} ({args.eval_episodes} prompts)")
    edges = [f"{args.token_budget * (k + 1) // args.bins // 1000}k" for k in range(args.bins)]
    print(f"{'method':<14}{'steps':>7}{'0k':>12}" + "".join(f"{e:>12}" for e in edges))
    for method, runs in results.items():
        cols = [fmt([r["curve"][k] for r in runs]) for k in range(args.bins)]
        print(f"{method:<14}{statistics.mean(r['steps'] for r in runs):>7.0f}{warm:>12.2f}"
              + "".join(f"{c:>12}" for c in cols))
    print("(held-out success rate, mean±std over seeds, after the given number of sampled tokens; 0k = warm start)")


if __name__ == "__main__":
    main()

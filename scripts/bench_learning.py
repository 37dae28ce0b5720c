"""Learning benchmark (not a test): success-rate curves of none / entropy / tool_boundary / appo at equal token budgets.

CodeExec with the ``flaky`` fault profile, the ``tiny`` preset (warm-started once, cached),
the same loop for every method: the only difference is where branches are taken
(``selector``). ``none`` is GRPO with N = M rollouts per prompt; the branching methods use
N initial rollouts and B branches per rollout, with dual-group advantages on the initial
rollouts (appo, entropy, random) or, for ``tool_boundary`` (ARPO), GRPO advantages with the
branches trained too. Every run
stops once it has sampled ``--token-budget`` tokens (initial rollouts + branches).

Prints, per method (mean ± std over seeds), the success rate on the same held-out prompts
(seeds 500000..) before training (the warm-start level) and after every budget fraction.
Training prompts differ per seed (``prompt_seed_offset``).

``--setting`` picks the defaults of every other flag (an explicit flag still wins):

- ``collatz`` (default): one task family (``collatz_steps``: copy two numbers into the solver
  call, run it, copy the result) and the tiny preset's smoke variant (``SMOKE_OPTIONS``:
  2 layers, hidden 64, 150 demonstrations, 300 SFT steps). That warm start is deliberately
  weak: sampled at τ = 1 it solves only ~0.27 of the held-out prompts (it copies digits wrong
  and garbles the retry after an injected fault; ~95% of flaky episodes see a fault), so RL
  has both room and reward variance. Stopping SFT earlier gives no signal at all: 100 / 150 /
  200 / 250 SFT steps score 0.00 / 0.00 / 0.00 / 0.02 on 48 held-out prompts.
  lr 3e-4 (1e-3 collapses to near-empty answers within ~15 steps; 5e-4 made appo worse),
  4 prompts per step, 600k sampled tokens per run (~10 min of one CPU core), 128 held-out
  prompts per evaluation (binomial std ~0.04 at 0.27). Measured (2026-11-28, seeds 0 and 1,
  600k tokens, ~20 min per method on a 2-core CPU): appo 0.27 -> 0.25 / 0.29 / 0.29 / 0.40±0.01,
  none 0.27 -> 0.21 / 0.26 / 0.37 / 0.41±0.08 (every 150k tokens). Both rise above the warm
  start by the end; at this scale the selectors do not separate.
- ``full``: all six CodeExec families with the default tiny preset (the original settings).
  That warm start scores ~0 on CodeExec easy, so GRPO-style methods get no reward variance.

    python scripts/bench_learning.py [--setting collatz] [--seeds 0 1] [--methods none appo]
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
from appo_algo.tiny import SMOKE_ENV_KWARGS, SMOKE_OPTIONS
from appo_algo.trainer import APPOTrainer

METHODS = ("none", "entropy", "tool_boundary", "appo")
# Defaults of the flags per --setting (see the module docstring).
SETTINGS: dict[str, dict] = {
    "collatz": {"token_budget": 600_000, "prompts": 4, "lr": 3e-4, "bins": 4, "eval_episodes": 128,
                "model_options": json.dumps(SMOKE_OPTIONS),
                "env_kwargs": json.dumps({"family": SMOKE_ENV_KWARGS["family"]})},
    "full": {"token_budget": 60_000, "prompts": 2, "lr": 1e-4, "bins": 5, "eval_episodes": 48,
             "model_options": "{}", "env_kwargs": "{}"},
}


def method_config(method: str, seed: int, args: argparse.Namespace) -> TrainConfig:
    n, b = args.n, args.b
    common = {"seed": seed, "prompt_seed_offset": 100_000 * seed, "faults": "flaky", "prompts_per_step": args.prompts, "lr": args.lr,
              "log_dir": f"{args.out}/{method}-s{seed}", "steps": 10**6, "progress": False, "tensorboard": False,
              "checkpoint_every": 10**6, "stdout_every": 0, "model_options": json.loads(args.model_options),
              "env_kwargs": {**TrainConfig().env_kwargs, **json.loads(args.env_kwargs)}}
    if method == "none":
        return TrainConfig.from_dict({**common, "selector": "none", "advantage": "grpo",
                                      "rollouts_per_prompt": n * (b + 1)})
    branched = {**common, "selector": method, "rollouts_per_prompt": n,
                "branch": {"branches_per_rollout": b, "arpo_copies": 1}}
    if method == "tool_boundary":  # ARPO: GRPO advantages, branches trained too
        return TrainConfig.from_dict({**branched, "advantage": "grpo", "train_rows": "all"})
    return TrainConfig.from_dict({**branched, "advantage": "appo"})


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
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="collatz",
                    help="defaults of the flags below (see the docstring); explicit flags override them")
    ap.add_argument("--token-budget", type=int)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--prompts", type=int, help="prompts per step")
    ap.add_argument("--n", type=int, default=4, help="initial rollouts per prompt (none uses N*(B+1))")
    ap.add_argument("--b", type=int, default=1, help="branches per rollout")
    ap.add_argument("--lr", type=float)
    ap.add_argument("--bins", type=int)
    ap.add_argument("--eval-episodes", type=int)
    ap.add_argument("--model-options", help="tiny preset options as JSON")
    ap.add_argument("--env-kwargs", help="CodeExec kwargs as JSON, merged over the config's "
                    "(e.g. '{\"family\": \"collatz_steps\"}')")
    ap.add_argument("--out", default="runs/bench_learning")
    args = ap.parse_args()
    for key, value in SETTINGS[args.setting].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
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

    print(f"\nsetting {args.setting}: CodeExec flaky {json.loads(args.env_kwargs)}, tiny preset "
          f"{json.loads(args.model_options)}, lr {args.lr}, {args.prompts} prompts/step, N={args.n}, B={args.b}")
    print(f"CodeExec flaky, tiny preset, {args.token_budget} sampled tokens per run, seeds {args.seeds}; "
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

"""Learner cost benchmark on the ``tiny`` preset: where a training step's time goes, and what the KV fork saves.

Prints three tables (medians over repeats, baselines measured in the same run):

1. per training step (APPO, CodeExec ``flaky``): generation, tools, scoring (BS), branch
   continuations, update, and the Branching Score's share of the step;
2. sampling throughput of the engine's decode loop vs ``model.generate`` at the same batch and length;
3. branch set-up: forking the prefix KV cache vs prefilling the prefix again (time and tokens run).

    python scripts/bench_learner.py [--steps 8] [--model-options '{...}'] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import gymnasium as gym
import torch

import appo_envs  # noqa: F401
from appo_algo.config import TrainConfig
from appo_algo.policy import eval_mode, sampling_stats, set_cpu_threads
from appo_algo.rollout import KVBatch
from appo_algo.trainer import APPOTrainer


def step_split(cfg: TrainConfig, steps: int) -> tuple[APPOTrainer, list[dict[str, float]]]:
    trainer = APPOTrainer(cfg)
    rows = [trainer.train_step() for _ in range(steps)]
    return trainer, rows


def decode_ours(policy, prompts: list[list[int]], new_tokens: int, gen: torch.Generator) -> float:
    """The engine's primitives: one ragged prefill chunk, then one KV-cached step per token."""
    kv = KVBatch.empty(len(prompts), policy.device)
    width = max(map(len, prompts))
    chunk = torch.full((len(prompts), width), policy.pad_id, dtype=torch.long)
    valid = torch.zeros_like(chunk, dtype=torch.bool)
    for r, p in enumerate(prompts):
        chunk[r, :len(p)] = torch.tensor(p)
        valid[r, :len(p)] = True
    one = torch.ones(len(prompts), 1, dtype=torch.bool, device=policy.device)
    t0 = time.perf_counter()
    with eval_mode(policy.model):
        logits = kv.step(policy, chunk.to(policy.device), valid.to(policy.device))
        for _ in range(new_tokens - 1):
            ids, _, _ = sampling_stats(logits, 1.0, gen)
            logits = kv.step(policy, ids[:, None], one)
        sampling_stats(logits, 1.0, gen)
    return time.perf_counter() - t0


def decode_hf(policy, prompts: list[list[int]], new_tokens: int) -> float:
    """``model.generate`` with left padding, sampling at τ = 1, exactly ``new_tokens`` new tokens."""
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), policy.pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p)
        attn[r, width - len(p):] = 1
    t0 = time.perf_counter()
    with eval_mode(policy.model), policy.autocast():
        policy.model.generate(input_ids=ids.to(policy.device), attention_mask=attn.to(policy.device),
                              do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, pad_token_id=policy.pad_id)
    return time.perf_counter() - t0


def branch_setup(policy, episodes, repeats: int) -> dict[str, float]:
    """Time and tokens to get each branch's prefix state: KV fork vs prefill again."""
    points = [(e, (e.prompt_len + len(e.ids)) // 2) for e in episodes]
    fork_t, prefill_t = [], []
    with eval_mode(policy.model):
        for _ in range(repeats):
            t0 = time.perf_counter()
            kv = KVBatch.from_rows([e.kv for e, _ in points], [e.cols[p - 2] + 1 for e, p in points],
                                   [p - 1 for _, p in points], policy.device)
            kv.step(policy, torch.tensor([[e.ids[p - 1]] for e, p in points], device=policy.device),
                    torch.ones(len(points), 1, dtype=torch.bool, device=policy.device))
            fork_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            width = max(p for _, p in points)
            chunk = torch.full((len(points), width), policy.pad_id, dtype=torch.long)
            valid = torch.zeros_like(chunk, dtype=torch.bool)
            for r, (e, p) in enumerate(points):
                chunk[r, :p] = torch.tensor(e.ids[:p])
                valid[r, :p] = True
            KVBatch.empty(len(points), policy.device).step(policy, chunk.to(policy.device), valid.to(policy.device))
            prefill_t.append(time.perf_counter() - t0)
    return {"branches": len(points), "fork_s": statistics.median(fork_t), "prefill_s": statistics.median(prefill_t),
            "fork_tokens": len(points), "prefill_tokens": sum(p for _, p in points)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8, help="training steps to time (the first is excluded)")
    ap.add_argument("--model-options", default="{}", help="tiny preset options as JSON (default: the preset's)")
    ap.add_argument("--batch", type=int, default=16, help="batch for the decode comparison")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--device", default=None)
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    set_cpu_threads(1)
    cfg = TrainConfig.from_dict({"model_options": json.loads(args.model_options), "device": args.device,
                                 "steps": args.steps, "log_dir": "runs/bench_learner", "progress": False,
                                 "tensorboard": False})
    trainer, rows = step_split(cfg, args.steps)
    rows = rows[1:] or rows  # the first step pays one-off costs (sandbox start-up, allocator warm-up)
    keys = {"generation": "time/generate_s", "tools": "time/tools_s", "scoring (BS)": "time/scoring_s",
            "branch generation": "time/branch_generate_s", "branch tools": "time/branch_tools_s",
            "update": "time/update_s", "step": "time/step_s"}
    med = {name: statistics.median(r[k] for r in rows) for name, k in keys.items()}
    print(f"\n1. per training step, APPO on CodeExec flaky, tiny preset, {len(rows)} steps "
          f"({cfg.prompts_per_step} prompts x N={cfg.rollouts_per_prompt}, B={cfg.branch.branches_per_rollout}), "
          f"device {trainer.policy.device}")
    print(f"{'phase':<20}{'median s':>10}{'share':>9}")
    for name, v in med.items():
        print(f"{name:<20}{v:>10.4f}{v / med['step']:>9.1%}")
    for label, tok, sec in (("initial rollouts", "rollout/sampled_tokens", "time/generate_s"),
                            ("branches", "branch/tokens", "time/branch_generate_s")):
        tokens = statistics.median(r[tok] for r in rows)
        rate = statistics.median(r[tok] / r[sec] for r in rows if r[sec] > 0)
        print(f"{label:<20} sampled tokens/step {tokens:>7.0f}   generation tokens/s {rate:>7.0f}")
    bs_frac = statistics.median(r["time/scoring_s"] / r["time/step_s"] for r in rows)
    print(f"BS compute share of step time (median per step): {bs_frac:.3%}")

    policy = trainer.policy
    envs = [gym.make(cfg.env_id, faults=cfg.faults, **cfg.env_kwargs) for _ in range(args.batch)]
    prompts = [policy.prompt_ids(env.reset(seed=900_000 + i)[1]["messages"]) for i, env in enumerate(envs)]
    gen = torch.Generator(device=policy.device).manual_seed(0)
    decode_ours(policy, prompts, 8, gen)  # warm-up
    decode_hf(policy, prompts, 8)
    ours = statistics.median(decode_ours(policy, prompts, args.new_tokens, gen) for _ in range(3))
    hf = statistics.median(decode_hf(policy, prompts, args.new_tokens) for _ in range(3))
    tokens = args.batch * args.new_tokens
    print(f"\n2. sampling throughput, batch {args.batch}, {args.new_tokens} new tokens, prompt ~{len(prompts[0])} tokens")
    print(f"{'engine':<22}{'tokens/s':>10}")
    print(f"{'ours (KV, ragged)':<22}{tokens / ours:>10.0f}")
    print(f"{'model.generate':<22}{tokens / hf:>10.0f}")
    print(f"ratio ours/generate: {hf / ours:.2f}x")

    seeds = list(range(800_000, 800_000 + 8))
    episodes = trainer.engine.rollout(trainer.envs[:8], seeds, list(range(8)), gen)
    setup = branch_setup(policy, episodes, repeats=5)
    print(f"\n3. branch set-up for {setup['branches']} branches at mid-rollout")
    print(f"{'method':<22}{'median s':>10}{'tokens run':>12}")
    print(f"{'KV fork':<22}{setup['fork_s']:>10.4f}{setup['fork_tokens']:>12}")
    print(f"{'prefill prefix again':<22}{setup['prefill_s']:>10.4f}{setup['prefill_tokens']:>12}")
    print(f"fork saves {1 - setup['fork_s'] / setup['prefill_s']:.1%} of set-up time")
    trainer.engine.release()
    trainer.close()
    for env in envs:
        env.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"step_split_s": med, "bs_fraction": bs_frac, "tokens_per_s": {"ours": tokens / ours,
                       "generate": tokens / hf}, "branch_setup": setup}, f, indent=1)


if __name__ == "__main__":
    main()

"""``APPOTrainer``: one training step, top to bottom, for APPO and its baselines in the same loop.

A step (``train_step``):

1. sample ``prompts_per_step`` prompts; each is played by N envs reset with the same seed
   (a GRPO group; faults are paired by design) — the initial rollouts, with π_old = current weights;
2. for each mini-batch j of prompt groups (``schedule: minibatch``, the paper's):
   a. one forward pass of π_θ over the mini-batch's initial rollouts (kept for the loss);
   b. the selector scores tokens (BS from Ω = that forward vs π_old, and the sampling entropy:
      no extra forward) and picks branch points; mini-batch 0 has π_θ = π_old, so Ω ≡ 1 is
      degenerate there and is reported as such (``branch/omega_degenerate_frac``);
   c. the branches are sampled with the current π_θ from forked KV caches and envs;
   d. advantages from the rewards of initial rollouts and branches, the future-KL weight,
      and the PPO loss on the initial rollouts only; one optimiser step.
3. metrics (``rollout/ branch/ adv/ train/ faults/ time/``), callbacks, checkpoint.

Every random draw derives from (seed, step): resumed runs repeat uninterrupted ones exactly on CPU.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import random
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import gymnasium as gym
import numpy as np
import torch

import appo_envs  # noqa: F401  (registers the env ids)
from appo_algo.advantages import ADVANTAGE_ESTIMATORS, AdvantageBatch, apply_future_kl
from appo_algo.branching import BRANCH_SELECTORS, BranchPlan, RolloutView
from appo_algo.callbacks import Callback, as_callback
from appo_algo.checkpoint import load_checkpoint, restore_rng_states, rng_states, save_checkpoint
from appo_algo.config import TrainConfig
from appo_algo.diagnostics.overhead import count_forward_calls
from appo_algo.losses import LOSSES
from appo_algo.metrics_log import MetricLogger
from appo_algo.policy import Policy, eval_mode, set_cpu_threads
from appo_algo.presets import load_policy
from appo_algo.rollout import Episode, RolloutEngine, RolloutLimits


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across runs and platforms)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


@dataclasses.dataclass
class PackedBatch:
    """Initial rollouts of one mini-batch as right-padded [R, T] tensors in full-sequence coordinates."""

    ids: torch.Tensor
    attn: torch.Tensor
    mask: torch.Tensor  # sampled tokens (the loss mask before infra masking)
    logp_old: torch.Tensor
    entropy: torch.Tensor
    lengths: torch.Tensor


def _pad_cat(tensors: Sequence[torch.Tensor], value: float | bool) -> torch.Tensor:
    """Stack [R_i, T_i] row blocks into one [ΣR, max T] tensor, right-padding with ``value``."""
    width = max(t.shape[1] for t in tensors)
    out = tensors[0].new_full((sum(t.shape[0] for t in tensors), width), value)
    row = 0
    for t in tensors:
        out[row:row + t.shape[0], :t.shape[1]] = t
        row += t.shape[0]
    return out


def concat_batches(a: PackedBatch, b: PackedBatch, pad_id: int) -> PackedBatch:
    """The rows of ``a`` then those of ``b``, padded to one width."""
    return PackedBatch(_pad_cat([a.ids, b.ids], pad_id), _pad_cat([a.attn, b.attn], 0),
                       _pad_cat([a.mask, b.mask], False), _pad_cat([a.logp_old, b.logp_old], 0.0),
                       _pad_cat([a.entropy, b.entropy], 0.0), torch.cat([a.lengths, b.lengths]))


def pack_episodes(episodes: Sequence[Episode], pad_id: int, device: torch.device) -> PackedBatch:
    """The exact token ids of the episodes (prompt, sampled ids, tool-response ids) plus their per-token records."""
    width = max(len(e.ids) for e in episodes)
    shape = (len(episodes), width)
    ids = torch.full(shape, pad_id, dtype=torch.long)
    attn = torch.zeros(shape, dtype=torch.long)
    mask = torch.zeros(shape, dtype=torch.bool)
    logp = torch.zeros(shape)
    ent = torch.zeros(shape)
    for r, e in enumerate(episodes):
        n = len(e.ids)
        ids[r, :n] = torch.tensor(e.ids)
        attn[r, :n] = 1
        mask[r, :n] = torch.tensor(e.mask)
        logp[r, :n] = torch.tensor(e.logp)
        ent[r, :n] = torch.tensor(e.entropy)
    lengths = torch.tensor([len(e.ids) for e in episodes])
    return PackedBatch(ids.to(device), attn.to(device), mask.to(device), logp.to(device), ent.to(device),
                       lengths.to(device))


def rollout_views(episodes: Sequence[Episode], logp_new: torch.Tensor | None, skip_table: torch.Tensor,
                  groups: Sequence[int]) -> list[RolloutView]:
    """Selector inputs per rollout (CPU tensors of the rollout's own length)."""
    views = []
    for r, e in enumerate(episodes):
        n = len(e.ids)
        ids = torch.tensor(e.ids)
        views.append(RolloutView(
            entropy=torch.tensor(e.entropy), logp_old=torch.tensor(e.logp),
            logp_new=None if logp_new is None else logp_new[r, :n].detach().float().cpu(),
            trainable=torch.tensor(e.mask), skip=skip_table[ids], segment=torch.tensor(e.segment),
            turn=torch.tensor(e.turn), tool_boundary=torch.tensor(e.tool_boundary()), group=int(groups[r])))
    return views


def _mean_metrics(items: Sequence[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for m in items for k in m})
    return {k: float(np.mean([m[k] for m in items if k in m])) for k in keys}


class APPOTrainer:
    """APPO (and GRPO / ARPO / random / entropy baselines) on a Gymnasium text env."""

    def __init__(self, config: TrainConfig, policy: Policy | None = None, log: Callable[[str], None] = print):
        self.cfg, self.log = config, log
        random.seed(config.seed)
        np.random.seed(config.seed % 2**32)
        torch.manual_seed(config.seed)
        set_cpu_threads(config.cpu_threads)
        self.policy = policy or load_policy(config.model, config.model_options, config.device, log=log)
        self.model = self.policy.model
        self.branch_cfg = dataclasses.replace(config.branch, vocab_size=self.policy.vocab_size)
        self.engine = RolloutEngine(self.policy, RolloutLimits(
            temperature=config.temperature, max_turn_tokens=config.max_turn_tokens,
            max_episode_tokens=config.max_episode_tokens, env_workers=config.env_workers,
            keep_branch_state=config.branches))
        n_envs = config.prompts_per_step * config.rollouts_per_prompt
        env_kwargs = dict(config.env_kwargs)
        if config.intensity is not None:
            env_kwargs["intensity"] = config.intensity
        self.envs = [gym.make(config.env_id, faults=config.faults, **env_kwargs) for _ in range(n_envs)]
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.ref_model = None
        if config.ppo.kl_coef > 0:
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.step = 0
        self.prompt_cursor = 0
        self.log_dir = Path(config.log_dir)
        self.logger: MetricLogger | None = None

    # --- the public loop ------------------------------------------------------------------------

    def learn(self, total_steps: int | None = None, callback: Callback | Sequence[Callback] | None = None
              ) -> "APPOTrainer":
        """Train until ``total_steps`` (default ``config.steps``) steps are done; resumable."""
        total = self.cfg.steps if total_steps is None else total_steps
        cb = as_callback(callback)
        self._open_logger()
        cb.on_training_start(self)
        bar = None
        if self.cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=self.step, desc=f"appo {self.cfg.selector}", unit="step", leave=False)
        try:
            while self.step < total:
                metrics = self.train_step(cb)
                keep_going = cb.on_step(self, metrics)  # callbacks may add metrics (diagnostics): log after them
                self.logger.log(self.step, metrics)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(success=f"{metrics['rollout/success_rate']:.2f}")
                if self.step % self.cfg.checkpoint_every == 0 or self.step == total:
                    self.save()
                if not keep_going:
                    self.save()
                    break
        finally:
            if bar is not None:
                bar.close()
            cb.on_training_end(self)
        return self

    def close(self) -> None:
        self.engine.close()
        for env in self.envs:
            env.close()
        if self.logger is not None:
            self.logger.close()

    # --- one step ---------------------------------------------------------------------------------

    def train_step(self, callback: Callback | None = None) -> dict[str, float]:
        """Roll out, branch, update; return this step's metrics."""
        cb = as_callback(callback)
        cfg, dev = self.cfg, self.policy.device
        t_step = time.perf_counter()
        gen = torch.Generator(device=dev).manual_seed(derived_seed(cfg.seed, self.step, 0))
        rng = np.random.default_rng(derived_seed(cfg.seed, self.step, 1))
        n, p = cfg.rollouts_per_prompt, cfg.prompts_per_step
        prompt_seeds = [cfg.prompt_seed_offset + self.prompt_cursor + g for g in range(p)]
        self.prompt_cursor += p

        cb.on_rollout_start(self)
        timings0, sampled0 = Counter(self.engine.timings), self.engine.sampled_tokens
        initial = self.engine.rollout(self.envs, [s for s in prompt_seeds for _ in range(n)],
                                      [g for g in range(p) for _ in range(n)], gen)
        t_roll = Counter(self.engine.timings)
        t_roll.subtract(timings0)
        initial_tokens = self.engine.sampled_tokens - sampled0
        cb.on_rollout_end(self, initial)

        chunks = [list(c) for c in np.array_split(np.arange(p), cfg.minibatches)]
        minibatches = [[initial[g * n + k] for g in chunk for k in range(n)] for chunk in chunks]
        branches: list[list[Episode]] = [[] for _ in chunks]
        branch_metrics: list[dict[str, float]] = []
        times = Counter()
        same_weights = self._same_weights_logps(minibatches, times) if cfg.branches and cfg.omega_reading == "code" \
            else None
        if cfg.branches and cfg.schedule == "pre_update":
            for j, eps in enumerate(minibatches):
                branches[j], m = self._branch(eps, None if same_weights is None else same_weights[j], j, gen, rng,
                                              times, cb)
                branch_metrics.append(m)
        update_metrics = []
        for j, eps in enumerate(minibatches):
            t0 = time.perf_counter()
            batch = pack_episodes(eps, self.policy.pad_id, dev)
            logp_new = self._logp_full(batch)
            times["update"] += time.perf_counter() - t0
            if cfg.branches and cfg.schedule == "minibatch":
                # Paper: π_θ after mini-batches < j (before the step's first update π_θ is π_old exactly: Ω ≡ 1).
                if same_weights is not None:
                    omega_logp = same_weights[j]
                else:
                    omega_logp = batch.logp_old if j == 0 else logp_new
                branches[j], m = self._branch(eps, omega_logp, j, gen, rng, times, cb)
                branch_metrics.append(m)
            t0 = time.perf_counter()
            m = self._update(eps, batch, logp_new, branches[j])
            times["update"] += time.perf_counter() - t0
            update_metrics.append(m)
            cb.on_update(self, j, m)
        self.engine.release()
        self.step += 1

        all_branches = [b for bs in branches for b in bs]
        metrics = self._rollout_metrics(initial, all_branches)
        metrics.update(_mean_metrics(branch_metrics))
        metrics.update(_mean_metrics(update_metrics))
        step_s = time.perf_counter() - t_step
        gen_s = t_roll["generate"] + times["branch_generate"]
        metrics.update({
            "time/generate_s": t_roll["generate"], "time/tools_s": t_roll["tools"],
            "time/scoring_s": times["scoring"], "time/branch_generate_s": times["branch_generate"],
            "time/branch_tools_s": times["branch_tools"], "time/update_s": times["update"], "time/step_s": step_s,
            "time/tokens_per_s": (initial_tokens + metrics["branch/tokens"]) / gen_s if gen_s > 0 else 0.0,
            "time/scoring_frac": times["scoring"] / step_s,
        })
        return metrics

    def _logp_full(self, batch: PackedBatch) -> torch.Tensor:
        """log π_θ of every token in full-sequence coordinates (position 0 gets 0), with grad.

        Dropout stays off (eval mode, autograd on): with it, ρ and Ω would be noisy and not exactly 1
        while π_θ = π_old."""
        self.model.eval()
        lp = self.policy.token_logprobs(batch.ids, batch.attn, self.cfg.temperature)
        return torch.nn.functional.pad(lp, (1, 0))

    def _same_weights_logps(self, minibatches: list[list[Episode]], times: Counter) -> list[torch.Tensor]:
        """The released code's Ω numerator: the trainer's log-probs of every mini-batch under the step-start
        weights (the sampler's), one extra forward pass per mini-batch, no grad."""
        t0 = time.perf_counter()
        with eval_mode(self.model):
            out = [self._logp_full(pack_episodes(eps, self.policy.pad_id, self.policy.device))
                   for eps in minibatches]
        times["scoring"] += time.perf_counter() - t0
        return out

    def _branch(self, eps: list[Episode], omega_logp: torch.Tensor | None, j: int, gen: torch.Generator,
                rng: np.random.Generator, times: Counter, cb: Callback) -> tuple[list[Episode], dict[str, float]]:
        """Score, select and sample the branches of one mini-batch's initial rollouts."""
        t0 = time.perf_counter()
        with count_forward_calls(self.policy) as calls:  # scoring must reuse PPO's log-probs: expect 0
            views = rollout_views(eps, omega_logp, self.engine.tables.skip, [e.group for e in eps])
            plan: BranchPlan = BRANCH_SELECTORS[self.cfg.selector](views, self.branch_cfg, rng)
        times["scoring"] += time.perf_counter() - t0
        before = Counter(self.engine.timings)
        out = self.engine.branch([(eps[pt.rollout], pt.position) for pt in plan.points], gen)
        after = Counter(self.engine.timings)
        after.subtract(before)
        times["branch_generate"] += after["generate"]
        times["branch_tools"] += after["tools"]
        metrics = {**plan.metrics, "branch/scoring_forward_passes": float(calls["forward"])}
        if j == 0 and "branch/omega_degenerate_frac" in plan.metrics:
            metrics["branch/first_minibatch_degenerate_frac"] = plan.metrics["branch/omega_degenerate_frac"]
        elif "branch/omega_degenerate_frac" in plan.metrics:
            metrics["branch/later_minibatch_degenerate_frac"] = plan.metrics["branch/omega_degenerate_frac"]
        cb.on_branch(self, j, out, metrics)
        return out, metrics

    def _update(self, eps: list[Episode], batch: PackedBatch, logp_new: torch.Tensor,
                branches: list[Episode]) -> dict[str, float]:
        """Advantages from initial + branch rewards, future-KL weight, PPO loss on the trained rows, one step.

        The trained rows are the initial rollouts (APPO, §5) or, with ``train_rows="all"``, the branches
        too, each a full row with its shared prefix, in one GRPO group per prompt (ARPO, §6)."""
        cfg, dev = self.cfg, self.policy.device
        if cfg.train_rows == "all" and branches:
            extra = pack_episodes(branches, self.policy.pad_id, dev)
            batch = concat_batches(batch, extra, self.policy.pad_id)
            logp_new = _pad_cat([logp_new, self._logp_full(extra)], 0.0)
            eps, branches = [*eps, *branches], []
        index = {id(e): r for r, e in enumerate(eps)}
        valid = torch.tensor([not (cfg.mask_infra_failures and e.infra_failure) for e in eps], device=dev)
        adv_batch = AdvantageBatch(
            rewards=torch.tensor([e.reward for e in eps], device=dev),
            group=torch.tensor([e.group for e in eps], device=dev),
            lengths=batch.lengths, seq_len=batch.ids.shape[1], valid=valid,
            branch_rewards=torch.tensor([b.reward for b in branches], device=dev),
            branch_parent=torch.tensor([index[id(b.root)] for b in branches], dtype=torch.long, device=dev),
            branch_position=torch.tensor([b.branch_position for b in branches], dtype=torch.long, device=dev),
            branch_valid=torch.tensor([not (cfg.mask_infra_failures and b.infra_failure) for b in branches],
                                      dtype=torch.bool, device=dev))
        base, metrics = ADVANTAGE_ESTIMATORS[cfg.advantage](adv_batch, cfg.adv)
        mask = batch.mask & valid[:, None]
        if cfg.adv.future_kl:
            adv, fut = apply_future_kl(base, logp_new.detach(), batch.logp_old, mask, cfg.adv)
            metrics.update(fut)
        else:
            adv = base
        logp_ref = None
        if self.ref_model is not None:
            with eval_mode(self.ref_model):
                lp = self.policy.token_logprobs(batch.ids, batch.attn, cfg.temperature, model=self.ref_model)
                logp_ref = torch.nn.functional.pad(lp, (1, 0))
        groups = len({e.group for e in eps})
        normalizer = float(cfg.group_size_m * groups) if cfg.ppo.aggregation == "seq_mean_div_M" else None
        loss, loss_metrics = LOSSES[cfg.loss](logp_new, batch.logp_old, adv, mask, cfg.ppo, logp_ref=logp_ref,
                                              normalizer=normalizer)
        metrics.update(loss_metrics)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        finite = bool(torch.isfinite(grad_norm))
        if finite:
            self.optimizer.step()
        metrics.update({"train/loss": float(loss.detach()), "train/grad_norm": float(grad_norm),
                        "train/skipped_nonfinite": float(not finite), "train/masked_infra_frac": float((~valid).float().mean()),
                        "train/rows": float(len(eps)),
                        "train/lr": self.optimizer.param_groups[0]["lr"]})
        return metrics

    # --- metrics ---------------------------------------------------------------------------------

    def _rollout_metrics(self, initial: list[Episode], branches: list[Episode]) -> dict[str, float]:
        n = len(initial)
        calls = sum(e.tool_calls for e in initial)
        faults = Counter()
        for e in initial:
            faults.update(e.faults)
        reasons = Counter(e.end_reason for e in initial)
        m = {
            "rollout/success_rate": float(np.mean([e.success for e in initial])),
            "rollout/reward_mean": float(np.mean([e.reward for e in initial])),
            "rollout/generated_tokens_mean": float(np.mean([e.generated_tokens for e in initial])),
            "rollout/episode_tokens_mean": float(np.mean([len(e.ids) for e in initial])),
            "rollout/turns_mean": float(np.mean([len(e.turn_ends) for e in initial])),
            "rollout/tool_calls_mean": calls / n,
            "rollout/tool_error_frac": sum(e.tool_errors for e in initial) / calls if calls else 0.0,
            "rollout/sampled_tokens": float(sum(e.generated_tokens for e in initial)),
            "faults/per_episode": sum(faults.values()) / n,
            "faults/infra_failure_frac": float(np.mean([e.infra_failure for e in initial])),
            "branch/n": float(len(branches)),
            "branch/tokens": float(sum(b.generated_tokens for b in branches)),
            "branch/success_rate": float(np.mean([b.success for b in branches])) if branches else 0.0,
            "branch/reward_mean": float(np.mean([b.reward for b in branches])) if branches else 0.0,
        }
        for reason, count in reasons.items():
            m[f"rollout/end_{reason}_frac"] = count / n
        for kind, count in faults.items():
            m[f"faults/{kind}_per_episode"] = count / n
        return m

    # --- checkpoints -------------------------------------------------------------------------------

    def _open_logger(self) -> None:
        if self.logger is None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.cfg.save(self.log_dir / "config.yaml")
            self.logger = MetricLogger(self.log_dir, self.cfg.tensorboard, self.cfg.stdout_every, echo=self.log)
            self.logger.truncate_after(self.step)

    def save(self) -> Path:
        """Atomic checkpoint of everything a resumed run needs."""
        return save_checkpoint(self.log_dir, {
            "step": self.step, "prompt_cursor": self.prompt_cursor, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "rng": rng_states(), "config": self.cfg.to_dict()})

    @classmethod
    def resume(cls, log_dir: str | Path, overrides: list[str] | None = None, policy: Policy | None = None,
               log: Callable[[str], None] = print) -> "APPOTrainer":
        """A trainer restored from ``log_dir`` (its config.yaml, then ``overrides``), ready to ``learn`` on."""
        log_dir = Path(log_dir)
        config = TrainConfig.load(log_dir / "config.yaml", [*(overrides or []), f"log_dir={log_dir}"])
        trainer = cls(config, policy=policy, log=log)
        state = load_checkpoint(log_dir, trainer.policy.device)
        trainer.model.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.step, trainer.prompt_cursor = state["step"], state["prompt_cursor"]
        restore_rng_states(state["rng"])
        return trainer

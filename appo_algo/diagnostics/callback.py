"""``DiagnosticsCallback``: the stress-lab diagnostics logged every training step, as a trainer callback.

Per step it adds to the step's metrics (so the trainer logs them) and to ``rows`` (one dict per
step, with the trainer's own metrics):

- ``overhead/``: BS scoring + selection wall time as a share of the step (diagnostic work
  excluded from the step), analytic FLOPs of scoring and selection vs the model's, model
  forward passes made during the trainer's scoring + selection (``policy.forward`` counted there);
- ``loc/``: where the step's branch points fall (``location_histogram``);
- ``stab/rescore_*``: the step's initial rollouts scored with π_θ after the first and after the
  last mini-batch update (two points of the mini-batch order) — top-B Jaccard and Spearman;
- ``stab/fault_*``: the same seeds replayed under the ``clean`` profile with the same sampling
  seed and weights; BS compared on each pair's shared prefix (faulted runs only);
- ``stab/omega_degenerate_frac``: rollouts whose Ω is flat under the step-end π_θ;
- ``oracle/``: at ``oracle_step``, the Monte Carlo oracle on the initial rollouts (after the
  step's updates, before their KV state is released).

The extra forward passes and rollouts these diagnostics make are timed as ``diag/seconds`` and
subtracted from the step time before the overhead share is taken.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import gymnasium as gym
import numpy as np
import torch

from appo_algo.branching import RolloutView
from appo_algo.callbacks import Callback
from appo_algo.diagnostics.location import location_histogram
from appo_algo.diagnostics.oracle import engine_continuations, oracle_check
from appo_algo.diagnostics.overhead import measure_selection, model_flops
from appo_algo.diagnostics.stability import degenerate_omega_fraction, paired_prefix_stability, rescoring_stability
from appo_algo.policy import eval_mode

if TYPE_CHECKING:
    from appo_algo.rollout import Episode
    from appo_algo.trainer import APPOTrainer


@dataclass
class DiagnosticsConfig:
    """Which diagnostics run and how much they sample."""

    rescore: bool = True
    paired_clean: bool = True
    oracle_step: int | None = None
    oracle_rollouts: int = 4
    oracle_candidates: int = 6
    oracle_k: int = 4
    oracle_boot: int = 300
    after_tool_window: int = 3
    criterion: str = "appo"


def _is_clean(faults: Any) -> bool:
    return faults is None or faults == "clean"


class DiagnosticsCallback(Callback):
    """Computes the diagnostics of every step; ``rows`` holds trainer metrics + diagnostics per step."""

    def __init__(self, config: DiagnosticsConfig | None = None):
        self.config = config or DiagnosticsConfig()
        self.rows: list[dict[str, float]] = []
        self.oracle: dict[str, Any] | None = None
        self._clean_envs: list[gym.Env] = []

    # --- hooks ----------------------------------------------------------------------------------

    def on_training_start(self, trainer: "APPOTrainer") -> None:
        cfg = trainer.cfg
        if self.config.paired_clean and not _is_clean(cfg.faults):
            self._clean_envs = [gym.make(cfg.env_id, faults="clean", **dict(cfg.env_kwargs)) for _ in trainer.envs]

    def on_training_end(self, trainer: "APPOTrainer") -> None:
        for env in self._clean_envs:
            env.close()
        self._clean_envs = []

    def on_rollout_start(self, trainer: "APPOTrainer") -> None:
        self._diag_s = 0.0
        self._initial: list[Episode] = []
        self._clean: list[Episode] = []
        self._branch_points: list[tuple[Episode, int]] = []
        self._logps: list[torch.Tensor] = []

    def on_rollout_end(self, trainer: "APPOTrainer", episodes: Sequence["Episode"]) -> None:
        self._initial = list(episodes)
        if self._clean_envs:
            from appo_algo.trainer import derived_seed

            t0 = time.perf_counter()
            # The trainer's own sampling seed for this step: the clean replay draws the same tokens until
            # the first observation that differs (or until the batch's live rows differ).
            gen = torch.Generator(device=trainer.policy.device).manual_seed(derived_seed(trainer.cfg.seed, trainer.step, 0))
            self._clean = trainer.engine.rollout(self._clean_envs, [e.seed for e in episodes],
                                                 [e.group for e in episodes], gen)
            self._diag_s += time.perf_counter() - t0

    def on_branch(self, trainer: "APPOTrainer", minibatch: int, branches: Sequence["Episode"],
                  metrics: dict[str, float]) -> None:
        self._branch_points += [(b.parent, int(b.branch_position)) for b in branches]

    def on_update(self, trainer: "APPOTrainer", minibatch: int, metrics: dict[str, float]) -> None:
        t0 = time.perf_counter()
        last = minibatch == trainer.cfg.minibatches - 1
        # π_θ after the first update (for re-scoring) and at the step's end (for everything else).
        if last or (minibatch == 0 and self.config.rescore):
            self._logps.append(self._logp(trainer, self._initial))
        if last and self.config.oracle_step == trainer.step:
            self._run_oracle(trainer)
        self._diag_s += time.perf_counter() - t0

    def on_step(self, trainer: "APPOTrainer", metrics: dict[str, float]) -> bool:
        t0 = time.perf_counter()
        row: dict[str, float] = {}
        cfg = trainer.branch_cfg
        views_end = self._views(trainer, self._initial, self._logps[-1])
        row.update(self._locations(trainer))
        row.update(self._overhead(trainer, views_end, metrics))
        row["stab/omega_degenerate_frac"] = degenerate_omega_fraction(views_end, cfg)
        if self.config.rescore and len(self._logps) == 2:
            views_first = self._views(trainer, self._initial, self._logps[0])
            row.update(rescoring_stability(views_first, views_end, cfg, self.config.criterion))
        if self._clean:
            logp_clean = self._logp(trainer, self._clean)
            clean_views = self._views(trainer, self._clean, logp_clean)
            row.update(paired_prefix_stability([(e.ids, v) for e, v in zip(self._clean, clean_views)],
                                               [(e.ids, v) for e, v in zip(self._initial, views_end)], cfg,
                                               self.config.criterion))
        if self.oracle is not None and self.oracle["step"] == trainer.step - 1:
            row.update(self.oracle["metrics"])
        row["diag/seconds"] = self._diag_s + (time.perf_counter() - t0)
        metrics.update(row)  # the trainer logs them with its own metrics
        self.rows.append({"step": float(trainer.step), **metrics})
        return True

    # --- pieces ---------------------------------------------------------------------------------

    def _logp(self, trainer: "APPOTrainer", episodes: Sequence["Episode"]) -> torch.Tensor:
        """log π_θ of every token of ``episodes`` under the current weights (diagnostic forward pass, no grad)."""
        from appo_algo.trainer import pack_episodes

        batch = pack_episodes(episodes, trainer.policy.pad_id, trainer.policy.device)
        with eval_mode(trainer.policy.model):
            lp = trainer.policy.token_logprobs(batch.ids, batch.attn, trainer.cfg.temperature)
        return torch.nn.functional.pad(lp, (1, 0)).cpu()

    def _views(self, trainer: "APPOTrainer", episodes: Sequence["Episode"], logp: torch.Tensor | None) -> list[RolloutView]:
        from appo_algo.trainer import rollout_views

        return rollout_views(episodes, logp, trainer.engine.tables.skip, [e.group for e in episodes])

    def _locations(self, trainer: "APPOTrainer") -> dict[str, float]:
        """Location shares of the step's branch points (the first regenerated token of each branch)."""
        parents: dict[int, int] = {}
        eps: list[Episode] = []
        points = []
        for parent, position in self._branch_points:
            if id(parent) not in parents:
                parents[id(parent)] = len(eps)
                eps.append(parent)
            points.append((parents[id(parent)], position))
        views = self._views(trainer, eps, None)
        return location_histogram(views, [(r, _generated_at_or_before(views[r], p)) for r, p in points],
                                  self.config.after_tool_window)

    def _overhead(self, trainer: "APPOTrainer", views: list[RolloutView], metrics: dict[str, float]) -> dict[str, float]:
        """Share of the step spent scoring + selecting, FLOPs shares, and the selector's own forward passes."""
        rng = np.random.default_rng(0)
        _, sel = measure_selection(views, trainer.branch_cfg, trainer.cfg.selector, rng,
                                   vocab_size=trainer.policy.vocab_size)
        params = sum(p.numel() for p in trainer.policy.model.parameters())
        tokens = sum(len(e.ids) for e in self._initial)
        step_flops = model_flops(params, tokens + int(metrics.get("branch/tokens", 0.0)), tokens)
        step_s = metrics["time/step_s"] - self._diag_s
        def share(seconds: float) -> float:
            return seconds / step_s if step_s > 0 else float("nan")

        return {
            "overhead/step_s": step_s,
            "overhead/scoring_s": metrics["time/scoring_s"],
            "overhead/bs_frac": share(metrics["time/scoring_s"]),
            "overhead/generate_frac": share(metrics["time/generate_s"] + metrics["time/branch_generate_s"]),
            "overhead/tools_frac": share(metrics["time/tools_s"] + metrics["time/branch_tools_s"]),
            "overhead/update_frac": share(metrics["time/update_s"]),
            # counted around the trainer's own scoring + selection (APPOTrainer._branch); none for GRPO
            "overhead/extra_forward_passes": metrics.get("branch/scoring_forward_passes", 0.0),
            "overhead/bs_flops_frac": (sel["overhead/score_flops"] + sel["overhead/select_flops"]) / step_flops,
            "overhead/entropy_flops_frac": sel["overhead/entropy_flops"] / step_flops,
            "overhead/step_flops": step_flops,
            "overhead/branch_tokens": float(metrics.get("branch/tokens", 0.0)),
        }

    def _run_oracle(self, trainer: "APPOTrainer") -> None:
        from appo_algo.trainer import derived_seed

        c = self.config
        eps = self._initial[: c.oracle_rollouts]
        views = self._views(trainer, eps, self._logp(trainer, eps))
        gen = torch.Generator(device=trainer.policy.device).manual_seed(derived_seed(trainer.cfg.seed, trainer.step, 7))
        rng = np.random.default_rng(derived_seed(trainer.cfg.seed, trainer.step, 8))
        result = oracle_check(views, [engine_continuations(trainer.engine, e, gen) for e in eps], trainer.branch_cfg,
                              c.oracle_candidates, c.oracle_k, rng, n_boot=c.oracle_boot)
        self.oracle = {"step": trainer.step, "metrics": result.metrics,
                       "impact": result.impact.tolist(), "scores": {k: v.tolist() for k, v in result.scores.items()}}


def _generated_at_or_before(view: RolloutView, position: int) -> int:
    """The branch's first regenerated token, or (``keep`` at a turn's end) the last generated token before it."""
    trainable = view.trainable.cpu().numpy()
    i = min(position, len(trainable) - 1)
    while i > 0 and not trainable[i]:
        i -= 1
    return i

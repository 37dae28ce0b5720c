"""Per-token ranking scores of each branch criterion, per rollout: what the diagnostics compare.

``POSITION_SCORERS`` maps a criterion to ``fn(view, cfg, rng) -> np.ndarray`` of length L
(higher = better branch point). Positions that can never be branch points (tool-response
tokens) get -inf so they never enter a top-B.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from appo_algo.branching import BranchConfig, RolloutView
from appo_algo.scoring import branching_score, omega, omega_is_degenerate, zscore

PositionScorer = Callable[[RolloutView, BranchConfig, np.random.Generator], np.ndarray]


def _masked(score: torch.Tensor, view: RolloutView) -> np.ndarray:
    out = score.detach().float().cpu().double().numpy().copy()
    out[~view.trainable.cpu().numpy()] = -np.inf
    return out


def view_omega(view: RolloutView, cfg: BranchConfig) -> torch.Tensor | None:
    """Ω of one rollout, or None before any update (logp_new missing)."""
    if view.logp_new is None:
        return None
    return omega(view.logp_new, view.logp_old, view.trainable, cfg.gamma, cfg.omega_clamp)


def omega_degenerate(view: RolloutView, cfg: BranchConfig) -> bool:
    """True when Ω is missing or flat after clipping (BS then ranks by entropy alone, as ``select_appo`` does)."""
    om = view_omega(view, cfg)
    return om is None or bool(omega_is_degenerate(om, view.trainable, cfg.clip, cfg.omega_flat_eps))


def score_entropy(view: RolloutView, cfg: BranchConfig, rng: np.random.Generator) -> np.ndarray:
    """Z(H) over the rollout's generated tokens."""
    return _masked(zscore(view.entropy, view.trainable), view)


def score_appo(view: RolloutView, cfg: BranchConfig, rng: np.random.Generator) -> np.ndarray:
    """BS = Z(clip Ω)·Z(H); Z(H) where Ω is degenerate (the selector's per-rollout fallback)."""
    if omega_degenerate(view, cfg):
        return score_entropy(view, cfg, rng)
    return _masked(branching_score(view_omega(view, cfg), view.entropy, view.trainable, cfg.clip), view)


def score_tool_boundary(view: RolloutView, cfg: BranchConfig, rng: np.random.Generator) -> np.ndarray:
    """ARPO's prior as a ranking: closeness to the last tool response (1 at the boundary, 1/(1+d) after)."""
    boundary = view.tool_boundary.cpu().numpy()
    trainable = view.trainable.cpu().numpy()
    out = np.zeros(len(boundary))
    since = None
    for i in range(len(boundary)):
        if boundary[i]:
            since = 0
        if trainable[i] and since is not None:
            out[i] = 1.0 / (1.0 + since)
            since += 1
    out[~trainable] = -np.inf
    return out


def score_random(view: RolloutView, cfg: BranchConfig, rng: np.random.Generator) -> np.ndarray:
    """Uniform keys: the control criterion."""
    out = rng.random(view.entropy.shape[0])
    out[~view.trainable.cpu().numpy()] = -np.inf
    return out


POSITION_SCORERS: dict[str, PositionScorer] = {
    "appo": score_appo,
    "entropy": score_entropy,
    "tool_boundary": score_tool_boundary,
    "random": score_random,
}

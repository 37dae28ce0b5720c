"""Policy losses (APPO_METHOD.md §5) as a registry name -> function.

A loss takes per-token tensors [N, L] of the trained rollouts (log-probs under π_θ with
grad, behaviour log-probs, advantages, a bool mask of trained tokens), a ``LossConfig``,
optional reference log-probs and an optional normaliser, and returns (scalar loss,
``train/...`` metrics). Masked tokens (tool responses, padding) contribute nothing to the
loss or its gradient, even when their inputs are not finite.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


@dataclass
class LossConfig:
    """PPO-clip switches; defaults are the paper's, released-code values in comments.

    eps_low, eps_high: ratio clip [1 − ε_low, 1 + ε_high] (code ε_high = 0.28).
    dual_clip:         c > 1 bounds the loss of negative-advantage tokens by −c·A (code 3.0); None = off.
    kl_coef:           β of the k3 KL to the reference policy (code 0.001); needs ``logp_ref``.
    aggregation:       "seq_mean_div_M" (paper: Σ_n token-mean_n / M, M given as ``normalizer``) |
                       "token_mean" (code: mean over all trained tokens) | "seq_mean" (mean of token-means).
    log_ratio_clamp:   clamp of log ρ before exp, so one wild token cannot overflow.
    """

    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip: float | None = None
    kl_coef: float = 0.0
    aggregation: str = "seq_mean_div_M"
    log_ratio_clamp: float = 20.0

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"LossConfig.aggregation={self.aggregation!r}; choose one of {sorted(AGGREGATIONS)}")
        if self.dual_clip is not None and not self.dual_clip > 1.0:
            raise ValueError(f"LossConfig.dual_clip={self.dual_clip} must be > 1 (or None to disable)")
        if self.eps_low < 0 or self.eps_high < 0 or self.kl_coef < 0:
            raise ValueError("LossConfig.eps_low, eps_high and kl_coef must be >= 0")


Loss = Callable[..., tuple[Tensor, dict[str, float]]]


def _seq_sum_of_means(per_token: Tensor, mask: Tensor) -> tuple[Tensor, int]:
    """Σ over rows of the row's token mean (rows without trained tokens add 0) and the non-empty row count."""
    counts = mask.sum(-1)
    means = per_token.sum(-1) / counts.clamp_min(1)
    return means.sum(), int((counts > 0).sum())


def _token_mean(per_token: Tensor, mask: Tensor, normalizer: float | None) -> Tensor:
    return per_token.sum() / (normalizer if normalizer is not None else max(1, int(mask.sum())))


def _seq_mean(per_token: Tensor, mask: Tensor, normalizer: float | None) -> Tensor:
    total, rows = _seq_sum_of_means(per_token, mask)
    return total / (normalizer if normalizer is not None else max(1, rows))


def _seq_mean_div_m(per_token: Tensor, mask: Tensor, normalizer: float | None) -> Tensor:
    if normalizer is None:
        raise ValueError(
            "aggregation 'seq_mean_div_M' needs normalizer=M x prompts in the batch (M rollouts per prompt incl. branches)"
        )
    return _seq_sum_of_means(per_token, mask)[0] / normalizer


# per-token loss [N, L] (0 on masked tokens), mask, optional normaliser -> scalar
AGGREGATIONS: dict[str, Callable[[Tensor, Tensor, float | None], Tensor]] = {
    "seq_mean_div_M": _seq_mean_div_m,
    "token_mean": _token_mean,
    "seq_mean": _seq_mean,
}


def _masked_mean(x: Tensor, mask: Tensor) -> float:
    return float(torch.where(mask, x, torch.zeros((), device=x.device)).sum()) / max(1, int(mask.sum()))


def ppo_clip(
    logp_new: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    mask: Tensor,
    cfg: LossConfig,
    logp_ref: Tensor | None = None,
    normalizer: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """PPO clipped surrogate (+ dual clip, + β·k3 KL) aggregated per ``cfg.aggregation``.

    Per token: ℓ = −min(ρA, clip(ρ, 1−ε_lo, 1+ε_hi)A); with dual clip c and A < 0,
    ℓ = min(ℓ, −cA); plus β·(π_ref/π_θ − log(π_ref/π_θ) − 1). ``normalizer`` replaces the
    default denominator: required for "seq_mean_div_M" (M × prompts in the batch); for
    "token_mean" / "seq_mean" it defaults to the count of trained tokens / non-empty rows in
    this call (pass the global count when accumulating micro-batches).
    """
    if not (logp_new.shape == logp_old.shape == advantages.shape == mask.shape):
        raise ValueError(
            f"ppo_clip inputs must share one shape: logp_new {tuple(logp_new.shape)}, logp_old {tuple(logp_old.shape)}, "
            f"advantages {tuple(advantages.shape)}, mask {tuple(mask.shape)}"
        )
    if cfg.kl_coef > 0 and logp_ref is None:
        raise ValueError("LossConfig.kl_coef > 0 needs logp_ref (reference-policy log-probs of the same tokens)")
    mask = mask.to(torch.bool)
    zero = torch.zeros((), dtype=torch.float32, device=logp_new.device)
    # where() before any arithmetic: masked inputs may be non-finite and must get exactly 0 gradient.
    log_ratio = torch.where(mask, logp_new.float() - logp_old.float().detach(), zero)
    log_ratio = log_ratio.clamp(-cfg.log_ratio_clamp, cfg.log_ratio_clamp)
    adv = torch.where(mask, advantages.float().detach(), zero)
    ratio = log_ratio.exp()
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - cfg.eps_low, 1.0 + cfg.eps_high)
    per_token = torch.maximum(unclipped, clipped)
    clip_active = (clipped > unclipped) & mask
    dual_active = torch.zeros_like(mask)
    if cfg.dual_clip is not None:
        bound = -adv * cfg.dual_clip
        dual_active = (adv < 0) & (per_token > bound) & mask
        per_token = torch.where(adv < 0, torch.minimum(per_token, bound), per_token)
    pg_token = per_token
    metrics: dict[str, float] = {}
    if logp_ref is not None:
        ref_log_ratio = torch.where(mask, logp_ref.float().detach() - logp_new.float(), zero)
        kl = ref_log_ratio.exp() - ref_log_ratio - 1.0  # k3: π_ref/π_θ − log(π_ref/π_θ) − 1 >= 0
        per_token = per_token + cfg.kl_coef * kl
        metrics["train/kl_ref"] = _masked_mean(kl.detach(), mask)
    per_token = torch.where(mask, per_token, zero)
    loss = AGGREGATIONS[cfg.aggregation](per_token, mask, normalizer)
    with torch.no_grad():
        metrics.update({
            "train/pg_loss": _masked_mean(pg_token, mask),
            "train/clip_frac": _masked_mean(clip_active.float(), mask),
            "train/dual_clip_frac": _masked_mean(dual_active.float(), mask),
            "train/approx_kl": _masked_mean(-log_ratio, mask),  # k1 estimate of KL(π_old || π_θ)
            "train/ratio_mean": _masked_mean(ratio, mask),
            "train/ratio_max": float(torch.where(mask, ratio, zero).max()) if bool(mask.any()) else 0.0,
            "train/tokens": float(mask.sum()),
        })
    return loss, metrics


LOSSES: dict[str, Loss] = {"ppo_clip": ppo_clip}

"""Advantage estimators (APPO_METHOD.md §4) as a registry name -> function, plus the future-KL scaling.

An estimator maps an ``AdvantageBatch`` (outcome rewards of the trained rollouts and of
the branches, with their tree structure) and an ``AdvantageConfig`` to per-token base
advantages [N, L] of the trained rollouts and ``adv/...`` metrics. The procedure-level
weight A^fut needs π_θ of the current mini-batch, so it is a separate step
(``apply_future_kl``) the update calls per mini-batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from appo_algo.scoring import discounted_suffix_sum


@dataclass
class AdvantageBatch:
    """Rewards and tree structure of one batch; all tensors 1-D.

    rewards:          [N] outcome rewards of the trained (initial) rollouts.
    group:            [N] int prompt ids; statistics are computed per prompt.
    lengths:          [N] int token count of each rollout's row (positions >= length get 0).
    seq_len:          L, width of the returned [N, L] tensor (the trainer's padded width).
    valid:            [N] bool or None; False = infrastructure failure: excluded from group
                      statistics and given zero advantage.
    branch_rewards:   [K] rewards of branch rollouts (None or empty: no branches).
    branch_parent:    [K] index into the N initial rollouts each branch was forked from.
    branch_position:  [K] ``BranchPoint.position``: first regenerated token; the branch shares
                      tokens t < position with its parent.
    branch_valid:     [K] bool or None, as ``valid`` for branches.

    Both estimators return advantages for the N initial rows only; for ARPO, where branches
    are trained too, pass every rollout as a row and no branch fields.
    """

    rewards: Tensor
    group: Tensor
    lengths: Tensor
    seq_len: int
    valid: Tensor | None = None
    branch_rewards: Tensor | None = None
    branch_parent: Tensor | None = None
    branch_position: Tensor | None = None
    branch_valid: Tensor | None = None


@dataclass
class AdvantageConfig:
    """Switches of §4; defaults are the paper's, released-code values in comments.

    std:          "population" (APPO code) | "unbiased" (verl) group std.
    eps:          added to the std (1e-6).
    dual_group:   "paper": R_n standardised against its prompt's initial group and against
                  its branch group (the branches' mean/std), averaged; a group whose rewards
                  do not vary sits out of the average (no scale to standardise by) |
                  "code": token t of n gets A_init(n) + mean A_branch(b) over the branches b of
                  n whose shared prefix contains t (t < position_b; the code's "split at a
                  position >= t" with its kept token i = position_b − 1).
    future_kl:    apply A = A_base · (1 + b·A^fut) in the update.
    fut_b:        b (paper 0.5; code 1.0).
    fut_gamma:    γ of A^fut (paper 2^(−1/32); code 2^(−1/64)).
    fut_clip:     clip range of A^fut (paper (1.0, 1.2)).
    fut_clamp:    clamp of the exponent before exp.
    safety_cap:   code: where A_base < 0 and ρ_i > safety_ratio, clamp A^fut to safety_range.
    """

    std: str = "population"
    eps: float = 1e-6
    dual_group: str = "paper"
    future_kl: bool = True
    fut_b: float = 0.5
    fut_gamma: float = 2.0 ** (-1.0 / 32.0)
    fut_clip: tuple[float, float] = (1.0, 1.2)
    fut_clamp: float = 20.0
    safety_cap: bool = False
    safety_ratio: float = 6.0
    safety_range: tuple[float, float] = (0.8, 1.0)

    def __post_init__(self) -> None:
        if self.std not in STD_DDOF:
            raise ValueError(f"AdvantageConfig.std={self.std!r}; choose one of {sorted(STD_DDOF)}")
        if self.dual_group not in DUAL_GROUP_READINGS:
            raise ValueError(f"AdvantageConfig.dual_group={self.dual_group!r}; choose one of {sorted(DUAL_GROUP_READINGS)}")
        self.fut_clip = tuple(self.fut_clip)  # YAML gives lists
        self.safety_range = tuple(self.safety_range)
        for name in ("fut_clip", "safety_range"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise ValueError(f"AdvantageConfig.{name}=({lo}, {hi}) must have lo <= hi")


Estimator = Callable[[AdvantageBatch, AdvantageConfig], tuple[Tensor, dict[str, float]]]

# Delta degrees of freedom of the group std.
STD_DDOF: dict[str, int] = {"population": 0, "unbiased": 1}


@dataclass
class _GroupStats:
    """Per-group mean, std, member count and flatness (all valid rewards equal, or no valid member)."""

    mean: Tensor
    std: Tensor
    count: Tensor
    flat: Tensor


def _group_stats(rewards: Tensor, index: Tensor, valid: Tensor, n_groups: int, std: str) -> _GroupStats:
    """Statistics of the valid rewards of each group 0..n_groups-1 (``index`` maps members to groups)."""
    r = rewards.to(torch.float32)
    w = valid.to(r.dtype)
    count = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add_(0, index, w)
    total = torch.zeros_like(count).index_add_(0, index, r * w)
    mean = total / count.clamp_min(1.0)
    dev = torch.where(valid, r - mean[index], torch.zeros_like(r))
    ss = torch.zeros_like(count).index_add_(0, index, dev.square())
    ddof = STD_DDOF[std]
    sd = (ss / (count - ddof).clamp_min(1.0)).sqrt()
    inf = torch.full_like(count, float("inf"))
    hi = (-inf).scatter_reduce(0, index, torch.where(valid, r, -torch.inf), "amax")
    lo = inf.scatter_reduce(0, index, torch.where(valid, r, torch.inf), "amin")
    # Exact equality, not std ~ 0: the mean of equal floats need not equal them bit for bit.
    # A lone member (no spread; unbiased std undefined) is flat too.
    flat = (count <= ddof) | ~(hi > lo)
    return _GroupStats(mean, sd, count, flat)


def _standardize(rewards: Tensor, index: Tensor, valid: Tensor, stats: _GroupStats, eps: float) -> Tensor:
    """(R − mean_g)/(std_g + eps) against the given group statistics; 0 for invalid members and flat groups."""
    z = (rewards.to(torch.float32) - stats.mean[index]) / (stats.std[index] + eps)
    return torch.where(valid & ~stats.flat[index], z, torch.zeros_like(z))


def _prompt_index(group: Tensor) -> tuple[Tensor, int]:
    """Arbitrary prompt ids -> dense indices 0..G-1 and G."""
    uniq, index = torch.unique(group, return_inverse=True)
    return index, int(uniq.numel())


def _valid_or_all(valid: Tensor | None, like: Tensor) -> Tensor:
    return torch.ones_like(like, dtype=torch.bool) if valid is None else valid.to(torch.bool)


def _zero_std_frac(stats: _GroupStats) -> float:
    """Fraction of groups with at least one valid member whose rewards are all equal."""
    present = stats.count > 0
    return float((stats.flat & present).sum()) / max(1, int(present.sum()))


def group_standardize(
    rewards: Tensor, group: Tensor, valid: Tensor | None = None, std: str = "population", eps: float = 1e-6
) -> tuple[Tensor, float]:
    """(R − mean_G)/(std_G + eps) per group over valid members -> (scores [N], fraction of zero-variance groups).

    Invalid members and members of zero-variance groups get 0.
    """
    if std not in STD_DDOF:
        raise ValueError(f"std={std!r}; choose one of {sorted(STD_DDOF)}")
    index, n_groups = _prompt_index(group)
    ok = _valid_or_all(valid, rewards)
    stats = _group_stats(rewards, index, ok, n_groups, std)
    return _standardize(rewards, index, ok, stats, eps), _zero_std_frac(stats)


def _token_mask(batch: AdvantageBatch) -> Tensor:
    """[N, L] bool: positions inside each rollout's row."""
    positions = torch.arange(batch.seq_len, device=batch.lengths.device)
    return positions.unsqueeze(0) < batch.lengths.unsqueeze(1)


def _branches(batch: AdvantageBatch) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """(rewards, parent, position, valid) of the branches, None when there are none; checks the fields agree."""
    if batch.branch_rewards is None or batch.branch_rewards.numel() == 0:
        return None
    if batch.branch_parent is None or batch.branch_position is None:
        raise ValueError("AdvantageBatch.branch_rewards needs branch_parent and branch_position (from the BranchPlan)")
    k = batch.branch_rewards.shape[0]
    if batch.branch_parent.shape != (k,) or batch.branch_position.shape != (k,):
        raise ValueError(f"branch_parent/branch_position must have shape ({k},) like branch_rewards")
    n = batch.rewards.shape[0]
    if bool(((batch.branch_parent < 0) | (batch.branch_parent >= n)).any()):
        raise ValueError(f"branch_parent must index the {n} initial rollouts")
    valid = _valid_or_all(batch.branch_valid, batch.branch_rewards)
    return batch.branch_rewards, batch.branch_parent.long(), batch.branch_position.long(), valid


def grpo_advantages(batch: AdvantageBatch, cfg: AdvantageConfig) -> tuple[Tensor, dict[str, float]]:
    """GRPO: the group-standardised reward on every token of the row.

    Branches, when given, join their prompt's group as one pool (the "without dual-group"
    ablation); advantages are returned for the initial rows only.
    """
    index, n_groups = _prompt_index(batch.group)
    ok = _valid_or_all(batch.valid, batch.rewards)
    rewards, members, member_ok = batch.rewards.to(torch.float32), index, ok
    branches = _branches(batch)
    if branches is not None:
        b_rewards, b_parent, _, b_ok = branches
        rewards = torch.cat([rewards, b_rewards.to(torch.float32)])
        members = torch.cat([index, index[b_parent]])
        member_ok = torch.cat([ok, b_ok])
    stats = _group_stats(rewards, members, member_ok, n_groups, cfg.std)
    scores = _standardize(batch.rewards, index, ok, stats, cfg.eps)
    mask = _token_mask(batch)
    adv = torch.where(mask, scores.unsqueeze(1), torch.zeros((), device=scores.device))
    metrics = {
        "adv/zero_std_frac": _zero_std_frac(stats),
        "adv/invalid_frac": float((~ok).float().mean()) if ok.numel() else 0.0,
        "adv/mean": float(scores[ok].mean()) if bool(ok.any()) else 0.0,
    }
    return adv, metrics


@dataclass
class _DualGroupInputs:
    """What both dual-group readings need: initial z-scores, both groups' statistics and the tree."""

    batch: AdvantageBatch
    index: Tensor  # [N] dense prompt index of each initial rollout
    valid: Tensor  # [N]
    z_init: Tensor  # [N] standardised in the initial group
    init_stats: _GroupStats
    branch_stats: _GroupStats
    branch_z: Tensor  # [K] standardised in the branch group
    branch_parent: Tensor
    branch_position: Tensor
    branch_valid: Tensor


def _dual_paper(d: _DualGroupInputs, cfg: AdvantageConfig) -> Tensor:
    """Paper reading: average of R_n standardised against the initial group and against the branch group.

    A group takes part only when its rewards vary (a flat group has no scale to standardise
    by); with neither, A = 0. Same value on every token of the rollout.
    """
    z_cross = _standardize(d.batch.rewards, d.index, d.valid, d.branch_stats, cfg.eps)
    init_on = (~d.init_stats.flat[d.index]).to(torch.float32)
    branch_on = (~d.branch_stats.flat[d.index]).to(torch.float32)
    per_rollout = (d.z_init * init_on + z_cross * branch_on) / (init_on + branch_on).clamp_min(1.0)
    return per_rollout.unsqueeze(1).expand(-1, d.batch.seq_len)


def _dual_code(d: _DualGroupInputs, cfg: AdvantageConfig) -> Tensor:
    """Released-code reading: token t of n gets A_init(n) + mean A_branch(b) over valid branches b of n with t < position_b."""
    seq_len = d.batch.seq_len
    positions = torch.arange(seq_len, device=d.branch_position.device)
    # covers[b, t]: token t lies in branch b's shared prefix (t < position_b).
    covers = (positions.unsqueeze(0) < d.branch_position.unsqueeze(1)) & d.branch_valid.unsqueeze(1)
    shape = (d.z_init.shape[0], seq_len)
    total = torch.zeros(shape, device=d.z_init.device).index_add_(0, d.branch_parent, covers * d.branch_z.unsqueeze(1))
    count = torch.zeros(shape, device=d.z_init.device).index_add_(0, d.branch_parent, covers.to(torch.float32))
    return d.z_init.unsqueeze(1) + total / count.clamp_min(1.0)


DUAL_GROUP_READINGS: dict[str, Callable[[_DualGroupInputs, AdvantageConfig], Tensor]] = {
    "paper": _dual_paper,
    "code": _dual_code,
}


def dual_group_advantages(batch: AdvantageBatch, cfg: AdvantageConfig) -> tuple[Tensor, dict[str, float]]:
    """APPO Eq. 6: initial rollouts and branches standardised in separate groups ("paper" or "code" reading).

    Without branches (or when none is valid) this is GRPO over the initial rollouts.
    Invalid (infrastructure-failure) rollouts get 0 on every token.
    """
    index, n_groups = _prompt_index(batch.group)
    ok = _valid_or_all(batch.valid, batch.rewards)
    init_stats = _group_stats(batch.rewards, index, ok, n_groups, cfg.std)
    z_init = _standardize(batch.rewards, index, ok, init_stats, cfg.eps)
    mask = _token_mask(batch) & ok.unsqueeze(1)
    metrics = {
        "adv/zero_std_frac": _zero_std_frac(init_stats),
        "adv/invalid_frac": float((~ok).float().mean()) if ok.numel() else 0.0,
    }
    branches = _branches(batch)
    if branches is None:
        adv = z_init.unsqueeze(1).expand(-1, batch.seq_len)
        metrics["adv/branch_zero_std_frac"] = 0.0
    else:
        b_rewards, b_parent, b_position, b_ok = branches
        branch_stats = _group_stats(b_rewards, index[b_parent], b_ok, n_groups, cfg.std)
        inputs = _DualGroupInputs(
            batch, index, ok, z_init, init_stats, branch_stats,
            _standardize(b_rewards, index[b_parent], b_ok, branch_stats, cfg.eps), b_parent, b_position, b_ok,
        )
        adv = DUAL_GROUP_READINGS[cfg.dual_group](inputs, cfg)
        metrics["adv/branch_zero_std_frac"] = _zero_std_frac(branch_stats)
    adv = torch.where(mask, adv, torch.zeros((), device=adv.device))
    metrics["adv/mean"] = float(adv[mask].mean()) if bool(mask.any()) else 0.0
    return adv, metrics


def future_kl_weight(
    logp_new: Tensor, logp_old: Tensor, mask: Tensor, cfg: AdvantageConfig, base: Tensor | None = None
) -> Tensor:
    """A^fut = clip(exp(Σ_{j≥i} γ^(j−i) log ρ_j), lo, hi), detached.

    With ``cfg.safety_cap`` (needs ``base``): where A_base < 0 and the token's own ratio
    ρ_i > safety_ratio, A^fut is clamped to ``safety_range`` (the released code's guard
    against amplifying a negative advantage on a token π_θ already moved far).
    """
    if cfg.safety_cap and base is None:
        raise ValueError("future_kl_weight with safety_cap=True needs the base advantages (base=...)")
    with torch.no_grad():
        log_ratio = torch.where(mask, logp_new.float() - logp_old.float(), torch.zeros((), device=mask.device))
        exponent = discounted_suffix_sum(log_ratio, mask, cfg.fut_gamma).clamp(-cfg.fut_clamp, cfg.fut_clamp)
        weight = exponent.exp().clamp(*cfg.fut_clip)
        if cfg.safety_cap:
            capped = _safety_capped(base, logp_new, logp_old, mask, cfg)
            weight = torch.where(capped, weight.clamp(*cfg.safety_range), weight)
    return weight


def _safety_capped(base: Tensor, logp_new: Tensor, logp_old: Tensor, mask: Tensor, cfg: AdvantageConfig) -> Tensor:
    """Tokens the released code's safety cap applies to: A_base < 0 and ρ_i > safety_ratio."""
    return (base < 0) & ((logp_new.detach().float() - logp_old.float()).exp() > cfg.safety_ratio) & mask


def apply_future_kl(
    base: Tensor, logp_new: Tensor, logp_old: Tensor, mask: Tensor, cfg: AdvantageConfig
) -> tuple[Tensor, dict[str, float]]:
    """A = A_base · (1 + b·A^fut) on valid tokens (0 elsewhere); ``base`` masked unchanged when cfg.future_kl is off."""
    zero = torch.zeros((), device=base.device)
    if not cfg.future_kl:
        return torch.where(mask, base, zero), {}
    weight = future_kl_weight(logp_new, logp_old, mask, cfg, base)
    adv = torch.where(mask, base * (1.0 + cfg.fut_b * weight), zero)
    n = max(1, int(mask.sum()))
    metrics = {
        "adv/fut_weight_mean": float(torch.where(mask, weight, zero).sum()) / n,
        "adv/fut_weight_max": float(torch.where(mask, weight, zero).max()) if bool(mask.any()) else 0.0,
    }
    if cfg.safety_cap:
        capped = _safety_capped(base, logp_new, logp_old, mask, cfg)
        metrics["adv/fut_safety_cap_frac"] = float(capped.sum()) / n
    return adv, metrics


ADVANTAGE_ESTIMATORS: dict[str, Estimator] = {
    "grpo": grpo_advantages,
    "appo": dual_group_advantages,
}

"""Branch-point selectors (APPO_METHOD.md §3, §6): where to fork rollouts, as a registry name -> function.

A selector sees per-rollout token records (``RolloutView``), a ``BranchConfig`` and an
explicit ``numpy.random.Generator`` and returns a ``BranchPlan``: the (rollout, position)
pairs the rollout engine continues from. ``position`` is always the index of the first
token that will be regenerated, so the engine keeps tokens ``[0, position)`` of the rollout
(and its KV cache) and samples from there. Tool-response tokens are never selected.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from appo_algo.scoring import branching_score, omega, omega_is_degenerate, zscore


class Segment(IntEnum):
    """Segment kind of a token; stored as int codes in ``RolloutView.segment``."""

    REASONING = 0
    TOOL_CALL = 1
    ANSWER = 2
    TOOL_RESPONSE = 3


@dataclass
class RolloutView:
    """Per-token records of one rollout, all 1-D tensors of the rollout's length L.

    entropy:       full-vocabulary sampling entropy H_i (any value on tool-response tokens).
    logp_old:      log π_old of the sampled token (behaviour policy).
    logp_new:      log π_θ of the same token under the current policy, or None before any update.
    trainable:     bool, generated (non-tool-response) tokens: the only candidates ever.
    skip:          bool, whitespace-only or punctuation-only tokens (excluded by filters / random).
    segment:       int codes of ``Segment``.
    turn:          int, index of the assistant turn the token belongs to.
    tool_boundary: bool, True on the first generated token after each tool response.
    group:         prompt index: rollouts of one prompt share it (pooled selection, budgets).
    """

    entropy: Tensor
    logp_old: Tensor
    logp_new: Tensor | None
    trainable: Tensor
    skip: Tensor
    segment: Tensor
    turn: Tensor
    tool_boundary: Tensor
    group: int

    def __post_init__(self) -> None:
        length = self.entropy.shape
        named = {
            "logp_old": self.logp_old, "trainable": self.trainable, "skip": self.skip,
            "segment": self.segment, "turn": self.turn, "tool_boundary": self.tool_boundary,
        }
        if self.logp_new is not None:
            named["logp_new"] = self.logp_new
        if self.entropy.dim() != 1:
            raise ValueError(f"RolloutView tensors must be 1-D per rollout; entropy has shape {tuple(length)}")
        for name, t in named.items():
            if t.shape != length:
                raise ValueError(f"RolloutView.{name} has shape {tuple(t.shape)}, entropy has {tuple(length)}")
        for name in ("trainable", "skip", "tool_boundary"):
            if named[name].dtype != torch.bool:
                raise ValueError(f"RolloutView.{name} must be a bool tensor (got {named[name].dtype})")
        if bool((self.trainable & (self.segment == Segment.TOOL_RESPONSE)).any()):
            raise ValueError("RolloutView marks tool-response tokens as trainable; set trainable=False on them")
        if bool((self.tool_boundary & ~self.trainable).any()):
            raise ValueError("RolloutView.tool_boundary must mark generated tokens (the first one after a tool response)")


@dataclass
class BranchConfig:
    """Switches of APPO_METHOD.md §3 and §6; defaults are the paper's, released-code values in comments.

    branches_per_rollout: B, branch points per rollout ("per_rollout" selection).
    budget_per_prompt:    M − N branches per prompt for "pooled" selection and as the cap of
                          "tool_boundary"; None means B × (rollouts of the prompt in the call).
                          "per_rollout" selection always takes B per rollout.
    selection:            "per_rollout" (paper: top-B per rollout) | "pooled" (code: top M − N
                          per prompt over the candidates of all its rollouts).
    clip:                 clip range of Ω in BS (paper (1.0, 1.2); code (0.8, 1.2)).
    gamma:                discount of Ω (paper 2^(−1/32); code 1.0).
    omega_clamp:          clamp of Ω's exponent before exp.
    omega_flat_eps:       clip(Ω) whose std is <= eps·(1 + |mean|) counts as degenerate (ranked by
                          entropy instead): log-prob noise between sampler and trainer kernels
                          under unchanged weights must not be ranked as signal.
    candidate_filter:     code's filter: Z(H) > 0, Z(Ω) > 0, BS > 0 and not a skip token; slots the
                          filter cannot fill are topped up from the other non-skip tokens by score.
    token_semantics:      "resample" (paper: token i is regenerated, position = i) |
                          "keep" (code: token i kept, resample after it, position = i + 1; token i
                          must then be followed by a generated token).
    layers:               branching layers; the engine calls the selector once per layer on
                          rollouts sampled uniformly from the current trees (paper Algorithm 1).
    arpo_alpha, arpo_beta: ARPO branch probability clip(α + β·ΔH, 0, 1).
    arpo_k:               generated tokens whose entropies measure H after a tool response and at
                          the start of the rollout (summed, then divided by log|V| as ARPO's code does).
    arpo_copies:          branches per ARPO branching event.
    vocab_size:           |V| for ARPO's normalisation; required by "tool_boundary".
    """

    branches_per_rollout: int = 3
    budget_per_prompt: int | None = None
    selection: str = "per_rollout"
    clip: tuple[float, float] = (1.0, 1.2)
    gamma: float = 2.0 ** (-1.0 / 32.0)
    omega_clamp: float = 20.0
    omega_flat_eps: float = 1e-6
    candidate_filter: bool = False
    token_semantics: str = "resample"
    layers: int = 1
    arpo_alpha: float = 0.5
    arpo_beta: float = 0.2
    arpo_k: int = 20
    arpo_copies: int = 2
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        if self.selection not in _SELECTION_MODES:
            raise ValueError(f"BranchConfig.selection={self.selection!r}; choose one of {sorted(_SELECTION_MODES)}")
        if self.token_semantics not in TOKEN_SEMANTICS:
            raise ValueError(
                f"BranchConfig.token_semantics={self.token_semantics!r}; choose one of {sorted(TOKEN_SEMANTICS)}"
            )
        if self.branches_per_rollout < 0 or (self.budget_per_prompt is not None and self.budget_per_prompt < 0):
            raise ValueError("BranchConfig.branches_per_rollout and budget_per_prompt must be >= 0")
        self.clip = tuple(self.clip)  # YAML gives lists
        if not self.clip[0] <= self.clip[1]:
            raise ValueError(f"BranchConfig.clip={self.clip} must be (lo, hi) with lo <= hi")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"BranchConfig.gamma={self.gamma} must be in (0, 1]")
        if self.layers < 1 or self.arpo_k < 1 or self.arpo_copies < 1:
            raise ValueError("BranchConfig.layers, arpo_k and arpo_copies must be >= 1")


@dataclass(frozen=True, order=True)
class BranchPoint:
    """Fork rollout ``rollout`` (index into the views list) keeping tokens [0, position)."""

    rollout: int
    position: int


@dataclass
class BranchPlan:
    """Selected branch points sorted by (rollout, position); a point repeats once per copy."""

    points: list[BranchPoint]
    metrics: dict[str, float] = field(default_factory=dict)


Selector = Callable[[list[RolloutView], BranchConfig, np.random.Generator], BranchPlan]

# Offset from the scored token i to the first regenerated token.
TOKEN_SEMANTICS: dict[str, int] = {"resample": 0, "keep": 1}


# ---------------------------------------------------------------- shared pieces


def _eligible(view: RolloutView, cfg: BranchConfig) -> np.ndarray:
    """Token indices i that may be scored as branch tokens under the token semantics."""
    trainable = view.trainable.cpu().numpy()
    if TOKEN_SEMANTICS[cfg.token_semantics]:
        # "keep": the resampled continuation starts at i + 1, which must itself be generated.
        nxt = np.zeros_like(trainable)
        nxt[:-1] = trainable[1:]
        return trainable & nxt
    return trainable


def _pad(views: list[RolloutView], name: str, fill: float | bool) -> Tensor:
    """Stack one per-token field of all views into [R, L_max], padding with ``fill``."""
    tensors = [getattr(v, name) for v in views]
    width = max(t.shape[0] for t in tensors)
    out = torch.full((len(tensors), width), fill, dtype=tensors[0].dtype, device=tensors[0].device)
    for r, t in enumerate(tensors):
        out[r, : t.shape[0]] = t
    return out


@dataclass
class _Scored:
    """Per-view numpy score and candidate tiers (tier 1: passes the filter; tier 2: top-up pool)."""

    score: list[np.ndarray]
    tier1: list[np.ndarray]
    tier2: list[np.ndarray]


def _tiers(views: list[RolloutView], cfg: BranchConfig, score: Tensor, passes: Tensor) -> _Scored:
    """Candidate tiers: without the filter every eligible token is tier 1; with it, tokens passing go first."""
    score_np = score.float().cpu().numpy()
    passes_np = passes.cpu().numpy()
    out = _Scored([], [], [])
    for r, view in enumerate(views):
        n = view.entropy.shape[0]
        eligible = _eligible(view, cfg)
        if cfg.candidate_filter:
            non_skip = eligible & ~view.skip.cpu().numpy()
            tier1 = non_skip & passes_np[r, :n]
            tier2 = non_skip & ~tier1
        else:
            tier1 = eligible
            tier2 = np.zeros_like(eligible)
        out.score.append(score_np[r, :n].astype(np.float64))
        out.tier1.append(tier1)
        out.tier2.append(tier2)
    return out


def _ranked(score: np.ndarray, tier1: np.ndarray, tier2: np.ndarray) -> tuple[np.ndarray, int]:
    """Indices of tier 1 by descending score, then tier 2 by descending score (ties: lower index first)."""
    order = np.argsort(-score, kind="stable")
    first = order[tier1[order]]
    return np.concatenate([first, order[tier2[order]]]), len(first)


def _groups(views: list[RolloutView]) -> dict[int, list[int]]:
    """Prompt id -> indices of its rollouts, in first-seen order."""
    groups: dict[int, list[int]] = {}
    for r, v in enumerate(views):
        groups.setdefault(v.group, []).append(r)
    return groups


def _group_budget(cfg: BranchConfig, n_rollouts: int) -> int:
    return cfg.branches_per_rollout * n_rollouts if cfg.budget_per_prompt is None else cfg.budget_per_prompt


def _select_per_rollout(views: list[RolloutView], cfg: BranchConfig, scored: _Scored) -> tuple[list[tuple[int, int]], dict]:
    """Paper: the top-B candidates of each rollout."""
    chosen: list[tuple[int, int]] = []
    short = topped = 0
    for r in range(len(views)):
        order, n_first = _ranked(scored.score[r], scored.tier1[r], scored.tier2[r])
        take = order[: cfg.branches_per_rollout]
        short += len(take) < cfg.branches_per_rollout
        topped += max(0, len(take) - n_first)
        chosen.extend((r, int(i)) for i in take)
    return chosen, {"branch/short_frac": short / max(1, len(views)), "branch/topup": float(topped)}


def _select_pooled(views: list[RolloutView], cfg: BranchConfig, scored: _Scored) -> tuple[list[tuple[int, int]], dict]:
    """Released code: pool the candidates of all rollouts of a prompt and take the top M − N."""
    chosen: list[tuple[int, int]] = []
    groups = _groups(views)
    short = topped = 0
    for members in groups.values():
        budget = _group_budget(cfg, len(members))
        rows = np.concatenate([np.full(scored.score[r].shape[0], r) for r in members])
        cols = np.concatenate([np.arange(scored.score[r].shape[0]) for r in members])
        order, n_first = _ranked(
            np.concatenate([scored.score[r] for r in members]),
            np.concatenate([scored.tier1[r] for r in members]),
            np.concatenate([scored.tier2[r] for r in members]),
        )
        take = order[:budget]
        short += len(take) < budget
        topped += max(0, len(take) - n_first)
        chosen.extend((int(rows[k]), int(cols[k])) for k in take)
    return chosen, {"branch/short_frac": short / max(1, len(groups)), "branch/topup": float(topped)}


_SELECTION_MODES = {"per_rollout": _select_per_rollout, "pooled": _select_pooled}


def _plan(views: list[RolloutView], cfg: BranchConfig, chosen: list[tuple[int, int]], metrics: dict) -> BranchPlan:
    """Turn scored token indices into branch points and add the common ``branch/`` diagnostics."""
    offset = TOKEN_SEMANTICS[cfg.token_semantics]
    points = sorted(BranchPoint(r, i + offset) for r, i in chosen)
    entropies = [float(views[r].entropy[i]) for r, i in chosen]
    rel = [i / max(1, views[r].entropy.shape[0]) for r, i in chosen]
    metrics = {
        "branch/points": float(len(points)),
        "branch/selected_entropy_mean": float(np.mean(entropies)) if entropies else 0.0,
        "branch/selected_rel_pos_mean": float(np.mean(rel)) if rel else 0.0,
        **metrics,
    }
    return BranchPlan(points, metrics)


def _rank_select(views: list[RolloutView], cfg: BranchConfig, score: Tensor, passes: Tensor, metrics: dict) -> BranchPlan:
    chosen, sel_metrics = _SELECTION_MODES[cfg.selection](views, cfg, _tiers(views, cfg, score, passes))
    return _plan(views, cfg, chosen, {**sel_metrics, **metrics})


def _entropy_scores(views: list[RolloutView]) -> tuple[Tensor, Tensor, Tensor]:
    """Z(H) per rollout over trainable tokens -> (score, filter pass: Z(H) > 0, mask)."""
    mask = _pad(views, "trainable", False)
    z_h = zscore(_pad(views, "entropy", 0.0), mask)
    return z_h, z_h > 0, mask


# ---------------------------------------------------------------- selectors


def select_none(views: list[RolloutView], cfg: BranchConfig, rng: np.random.Generator) -> BranchPlan:
    """GRPO: no branching."""
    return BranchPlan([], {"branch/points": 0.0})


def select_random(views: list[RolloutView], cfg: BranchConfig, rng: np.random.Generator) -> BranchPlan:
    """Control: uniform over eligible non-skip tokens (B per rollout, or the budget per prompt when pooled).

    The top-k of i.i.d. uniform keys is a uniform k-subset, so the ranked selection modes apply as is.
    """
    scored = _Scored([], [], [])
    for view in views:
        eligible = _eligible(view, cfg) & ~view.skip.cpu().numpy()
        scored.score.append(rng.random(eligible.shape[0]))
        scored.tier1.append(eligible)
        scored.tier2.append(np.zeros_like(eligible))
    chosen, metrics = _SELECTION_MODES[cfg.selection](views, cfg, scored)
    return _plan(views, cfg, chosen, metrics)


def select_entropy(views: list[RolloutView], cfg: BranchConfig, rng: np.random.Generator) -> BranchPlan:
    """Entropy-only BS ablation: rank by Z(H); the filter keeps Z(H) > 0."""
    if not views:
        return BranchPlan([], {"branch/points": 0.0})
    z_h, passes, _ = _entropy_scores(views)
    return _rank_select(views, cfg, z_h, passes, {})


def _group_fallback(views: list[RolloutView], degenerate: Tensor, mask: Tensor) -> Tensor:
    """Pooled selection: a prompt whose rollouts (with >= 2 generated tokens) include a degenerate one falls back whole."""
    group_ids = torch.tensor([v.group for v in views], device=mask.device)
    bad_groups = group_ids[degenerate & (mask.sum(-1) >= 2)]
    return degenerate | torch.isin(group_ids, bad_groups)


# Which rollouts rank by entropy, given the degenerate ones, per selection mode.
_FALLBACK_SCOPE: dict[str, Callable[[list[RolloutView], Tensor, Tensor], Tensor]] = {
    "per_rollout": lambda views, degenerate, mask: degenerate,
    "pooled": _group_fallback,
}


def select_appo(views: list[RolloutView], cfg: BranchConfig, rng: np.random.Generator) -> BranchPlan:
    """APPO: rank by BS = Z(clip Ω)·Z(H); entropy ranking where Ω is unavailable or degenerate.

    Falling back is decided per rollout ("per_rollout") or per prompt ("pooled": if any of
    its rollouts with >= 2 generated tokens is degenerate, the whole pool ranks by Z(H), so
    one pool never mixes two score scales). ``branch/omega_degenerate_frac`` is the fraction
    of rollouts ranked by entropy.
    """
    if not views:
        return BranchPlan([], {"branch/points": 0.0, "branch/omega_degenerate_frac": 0.0})
    z_h, h_passes, mask = _entropy_scores(views)
    have_new = torch.tensor([v.logp_new is not None for v in views], device=mask.device)
    degenerate = ~have_new
    score, passes = z_h, h_passes
    if bool(have_new.any()):
        new = torch.stack([torch.nn.functional.pad(
            (v.logp_new if v.logp_new is not None else v.logp_old), (0, mask.shape[1] - v.entropy.shape[0])
        ) for v in views])
        om = omega(new, _pad(views, "logp_old", 0.0), mask, cfg.gamma, cfg.omega_clamp)
        degenerate = degenerate | omega_is_degenerate(om, mask, cfg.clip, cfg.omega_flat_eps)
        z_om = zscore(om.clamp(*cfg.clip), mask)
        bs = branching_score(om, _pad(views, "entropy", 0.0), mask, cfg.clip)
        # BS > 0 follows from Z(H) > 0 and Z(Ω) > 0; kept explicit because the spec lists it.
        bs_passes = (z_h > 0) & (z_om > 0) & (bs > 0)
        fallback = _FALLBACK_SCOPE[cfg.selection](views, degenerate, mask)
        score = torch.where(fallback.unsqueeze(-1), z_h, bs)
        passes = torch.where(fallback.unsqueeze(-1), h_passes, bs_passes)
        degenerate = fallback
    frac = float(degenerate.float().mean())
    return _rank_select(views, cfg, score, passes, {"branch/omega_degenerate_frac": frac})


def _window_entropy(view: RolloutView, start: int, k: int) -> float:
    """Sum of the entropies of the first k generated tokens from ``start`` within that token's turn."""
    trainable = view.trainable.cpu().numpy()
    turn = view.turn.cpu().numpy()
    idx = np.flatnonzero(trainable[start:] & (turn[start:] == turn[start]))[:k] + start
    return float(view.entropy.detach().cpu().double().numpy()[idx].sum())


def select_tool_boundary(views: list[RolloutView], cfg: BranchConfig, rng: np.random.Generator) -> BranchPlan:
    """ARPO: at each tool boundary j branch with probability clip(α + β·ΔH, 0, 1), ``arpo_copies`` copies.

    ΔH = (H_k(j) − H_k(start)) / log|V|, H_k the summed entropy of the first k generated tokens
    of a turn (ARPO's scale). The reference H_k(start) is the rollout's own first turn,
    computed per call (never carried across batches). Events are visited turn by turn (ties
    in random order) and stop when the prompt's budget is spent. Branches regenerate from j
    under either token semantics (ARPO forks after the tool response).
    """
    if cfg.vocab_size is None or cfg.vocab_size < 2:
        raise ValueError("select 'tool_boundary' needs BranchConfig.vocab_size (the tokenizer's vocabulary size)")
    norm = math.log(cfg.vocab_size)
    events: list[tuple[int, float, int, int, float]] = []  # (turn, tiebreak, rollout, position, prob)
    for r, view in enumerate(views):
        generated = np.flatnonzero(view.trainable.cpu().numpy())
        boundaries = np.flatnonzero(view.tool_boundary.cpu().numpy())
        if len(generated) == 0 or len(boundaries) == 0:
            continue
        h_init = _window_entropy(view, int(generated[0]), cfg.arpo_k)
        for j in boundaries:
            delta = (_window_entropy(view, int(j), cfg.arpo_k) - h_init) / norm
            prob = min(1.0, max(0.0, cfg.arpo_alpha + cfg.arpo_beta * delta))
            events.append((int(view.turn[j]), float(rng.random()), r, int(j), prob))
    events.sort()
    groups = _groups(views)
    left = {g: _group_budget(cfg, len(m)) for g, m in groups.items()}
    points: list[BranchPoint] = []
    fired = 0
    for _, _, r, j, prob in events:
        group = views[r].group
        if left[group] == 0 or rng.random() >= prob:
            continue
        fired += 1
        copies = min(cfg.arpo_copies, left[group])
        left[group] -= copies
        points.extend([BranchPoint(r, j)] * copies)
    probs = [e[4] for e in events]
    metrics = {
        "branch/points": float(len(points)),
        "branch/events": float(len(events)),
        "branch/events_fired": float(fired),
        "branch/event_prob_mean": float(np.mean(probs)) if probs else 0.0,
        "branch/budget_unused": float(sum(left.values())),
    }
    return BranchPlan(sorted(points), metrics)


BRANCH_SELECTORS: dict[str, Selector] = {
    "none": select_none,
    "random": select_random,
    "entropy": select_entropy,
    "tool_boundary": select_tool_boundary,
    "appo": select_appo,
}

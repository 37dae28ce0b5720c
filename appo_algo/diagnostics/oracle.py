"""Monte Carlo oracle (the paper's pilot analysis as a tool): the true impact of a position is the spread of outcomes
of K continuations from it; how well does each criterion rank positions by that impact?

The oracle only needs a way to continue a rollout from a position and observe its reward:
``continue_from(position) -> reward`` (stateful: each call draws a new continuation), or a
batched ``continue_batch(positions) -> rewards`` that the real policy + env implement with one
engine call (``engine_continuations``). ``position`` is the first regenerated token.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np

from appo_algo.branching import BranchConfig, RolloutView
from appo_algo.diagnostics.ranking import bootstrap_ci, spearman, top_b
from appo_algo.diagnostics.scores import POSITION_SCORERS

if TYPE_CHECKING:
    import torch

    from appo_algo.rollout import Episode, RolloutEngine

ContinueFrom = Callable[[int], float]
ContinueBatch = Callable[[Sequence[int]], Sequence[float]]


def batched(continue_from: ContinueFrom) -> ContinueBatch:
    """Turn a one-position continuation into the batched form the oracle calls."""
    return lambda positions: [float(continue_from(p)) for p in positions]


def engine_continuations(engine: "RolloutEngine", episode: "Episode", generator: "torch.Generator") -> ContinueBatch:
    """Continuations of a real rollout: one batched engine.branch call (KV-forked prefix, forked env) per request."""
    return lambda positions: [b.reward for b in engine.branch([(episode, int(p)) for p in positions], generator)]


def sample_candidates(view: RolloutView, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` distinct generated, non-skip token positions, uniformly, sorted."""
    pool = np.flatnonzero(view.trainable.cpu().numpy() & ~view.skip.cpu().numpy())
    if len(pool) == 0:
        return pool
    return np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))


def oracle_impact(positions: Sequence[int], continue_batch: ContinueBatch, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(impact, mean outcome) per position: population std and mean of ``k`` continuation rewards each."""
    if k < 2:
        raise ValueError(f"oracle needs k >= 2 continuations per position to measure a spread (got {k})")
    positions = [int(p) for p in positions]
    rewards = np.asarray(continue_batch([p for p in positions for _ in range(k)]), dtype=np.float64)
    if rewards.shape != (len(positions) * k,):
        raise ValueError(f"continue_batch returned {rewards.shape[0] if rewards.ndim else 0} rewards for "
                         f"{len(positions) * k} requests; it must return one reward per requested position")
    rewards = rewards.reshape(len(positions), k)
    return rewards.std(axis=1), rewards.mean(axis=1)


def precision_vs_impact(score: np.ndarray, impact: np.ndarray, b: int) -> float:
    """Share of the score's top-b positions whose impact reaches the b-th largest impact (ties count as relevant).

    NaN when no position has more impact than another (nothing to find).
    """
    b = min(b, len(score))
    if b == 0 or np.ptp(impact) == 0:
        return float("nan")
    threshold = np.sort(impact)[::-1][b - 1]
    return float(np.mean([impact[i] >= threshold for i in top_b(score, b)]))


@dataclass
class OracleResult:
    """Candidates and their impact, with each criterion's rank agreement and bootstrap CIs."""

    impact: np.ndarray
    scores: dict[str, np.ndarray]
    metrics: dict[str, float]


def rank_agreement(impact: np.ndarray, scores: Mapping[str, np.ndarray], b: int, rng: np.random.Generator,
                   n_boot: int = 500, level: float = 0.95) -> dict[str, float]:
    """Per criterion: Spearman(score, impact) and precision@b, each with a percentile bootstrap CI over positions.

    Keys: ``oracle/<criterion>_spearman`` (+ ``_lo``/``_hi``), ``oracle/<criterion>_precision`` (+ ``_lo``/``_hi``).
    """
    out: dict[str, float] = {"oracle/positions": float(len(impact)), "oracle/impact_mean": float(np.mean(impact))
                             if len(impact) else float("nan")}
    for name, score in scores.items():
        score = np.asarray(score, dtype=np.float64)
        rho = lambda idx, s=score: spearman(s[idx], impact[idx])  # noqa: E731
        prec = lambda idx, s=score: precision_vs_impact(s[idx], impact[idx], b)  # noqa: E731
        full = np.arange(len(impact))
        out[f"oracle/{name}_spearman"] = rho(full)
        out[f"oracle/{name}_spearman_lo"], out[f"oracle/{name}_spearman_hi"] = bootstrap_ci(rho, len(impact), rng, n_boot, level)
        out[f"oracle/{name}_precision"] = prec(full)
        out[f"oracle/{name}_precision_lo"], out[f"oracle/{name}_precision_hi"] = bootstrap_ci(prec, len(impact), rng, n_boot, level)
    return out


def oracle_check(views: Sequence[RolloutView], continuations: Sequence[ContinueBatch], cfg: BranchConfig,
                 n_candidates: int, k: int, rng: np.random.Generator, b: int | None = None,
                 criteria: Sequence[str] = tuple(POSITION_SCORERS), n_boot: int = 500) -> OracleResult:
    """Sample candidates in each rollout, measure their impact with ``k`` continuations, and score every criterion.

    Scores are per-rollout (z-scores for BS and entropy), pooled over rollouts for the rank
    statistics; ``b`` defaults to ``cfg.branches_per_rollout`` × rollouts with candidates.
    Positions use "resample" semantics: the candidate token itself is regenerated.
    """
    if len(views) != len(continuations):
        raise ValueError(f"oracle_check needs one continuation per view, got {len(continuations)} for {len(views)}")
    unknown = set(criteria) - set(POSITION_SCORERS)
    if unknown:
        raise ValueError(f"unknown oracle criteria {sorted(unknown)}; choose from {sorted(POSITION_SCORERS)}")
    impacts, scores = [], {c: [] for c in criteria}
    used = 0
    for view, cont in zip(views, continuations):
        cand = sample_candidates(view, n_candidates, rng)
        if len(cand) == 0:
            continue
        used += 1
        impact, _ = oracle_impact(cand, cont, k)
        impacts.append(impact)
        for c in criteria:
            scores[c].append(POSITION_SCORERS[c](view, cfg, rng)[cand])
    impact = np.concatenate(impacts) if impacts else np.zeros(0)
    pooled = {c: np.concatenate(v) if v else np.zeros(0) for c, v in scores.items()}
    b = b if b is not None else max(1, cfg.branches_per_rollout * used)
    metrics = rank_agreement(impact, pooled, b, rng, n_boot)
    metrics["oracle/k"] = float(k)
    metrics["oracle/rollouts"] = float(used)
    return OracleResult(impact, pooled, metrics)


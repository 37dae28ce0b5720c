"""Rank statistics shared by the diagnostics: Spearman, top-B Jaccard, bootstrap CIs."""
from __future__ import annotations

from typing import Callable

import numpy as np


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as scipy.stats.rankdata 'average')."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    # Boundaries of runs of equal values in sorted order.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation; NaN when either side is constant or has < 2 values (nothing to rank)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"spearman needs equal-length inputs, got {a.shape} and {b.shape}")
    if len(a) < 2:
        return float("nan")
    ra, rb = rankdata(a) - (len(a) + 1) / 2.0, rankdata(b) - (len(b) + 1) / 2.0
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def top_b(score: np.ndarray, b: int) -> set[int]:
    """Indices of the b largest scores (ties: lower index first, as the selectors break them)."""
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="stable")
    return set(int(i) for i in order[:b])


def jaccard(a: set[int], b: set[int]) -> float:
    """|a ∩ b| / |a ∪ b|; two empty sets agree perfectly (1.0)."""
    union = a | b
    return len(a & b) / len(union) if union else 1.0


def topb_jaccard(score_a: np.ndarray, score_b: np.ndarray, b: int) -> float:
    """Jaccard overlap of the top-b positions of two scorings of the same tokens."""
    return jaccard(top_b(score_a, b), top_b(score_b, b))


def bootstrap_ci(stat: Callable[[np.ndarray], float], n: int, rng: np.random.Generator,
                 n_boot: int = 1000, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat(indices)`` over ``n`` resampled units; NaN draws are dropped."""
    if n < 2:
        return float("nan"), float("nan")
    draws = np.array([stat(rng.integers(0, n, size=n)) for _ in range(n_boot)], dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    if len(draws) == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(draws, alpha)), float(np.quantile(draws, 1.0 - alpha))

"""Branching-Score stability: top-B Jaccard and Spearman between two scorings, paired clean/faulted prefixes, degenerate Ω."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from appo_algo.branching import BranchConfig, RolloutView
from appo_algo.diagnostics.ranking import spearman, topb_jaccard
from appo_algo.diagnostics.scores import POSITION_SCORERS, omega_degenerate


def compare_scores(score_a: np.ndarray, score_b: np.ndarray, valid: np.ndarray, b: int) -> tuple[float, float]:
    """(top-b Jaccard, Spearman) of two scorings restricted to the ``valid`` positions."""
    a, bb = np.asarray(score_a)[valid], np.asarray(score_b)[valid]
    return topb_jaccard(a, bb, b), spearman(a, bb)


def _summary(prefix: str, pairs: list[tuple[float, float]], degenerate: int) -> dict[str, float]:
    jac = [j for j, _ in pairs]
    rho = [s for _, s in pairs if np.isfinite(s)]
    return {f"{prefix}_jaccard": float(np.mean(jac)) if jac else float("nan"),
            f"{prefix}_spearman": float(np.mean(rho)) if rho else float("nan"),
            f"{prefix}_pairs": float(len(pairs)), f"{prefix}_degenerate": float(degenerate)}


def _uninformative(criterion: str, va: RolloutView, vb: RolloutView, cfg: BranchConfig) -> bool:
    """BS of a rollout with degenerate Ω is its entropy ranking, stable by construction: such pairs are left out."""
    return criterion == "appo" and (omega_degenerate(va, cfg) or omega_degenerate(vb, cfg))


def rescoring_stability(views_a: Sequence[RolloutView], views_b: Sequence[RolloutView], cfg: BranchConfig,
                        criterion: str = "appo", prefix: str = "stab/rescore") -> dict[str, float]:
    """Same rollouts scored twice (e.g. π_θ after different mini-batch orders or seeds): mean top-B Jaccard and Spearman.

    ``views_a[k]`` and ``views_b[k]`` must hold the same tokens; they differ in ``logp_new``.
    For BS, pairs where either scoring has degenerate Ω are counted in ``<prefix>_degenerate``
    and left out of the means (NaN when no pair is left).
    """
    if len(views_a) != len(views_b):
        raise ValueError(f"rescoring_stability needs paired views, got {len(views_a)} and {len(views_b)}")
    scorer = POSITION_SCORERS[criterion]
    rng = np.random.default_rng(0)  # unused by deterministic criteria; fixed so 'random' is reproducible
    pairs, degenerate = [], 0
    for va, vb in zip(views_a, views_b):
        if va.entropy.shape != vb.entropy.shape:
            raise ValueError("rescoring_stability: paired views differ in length; they must be the same rollout")
        valid = va.trainable.cpu().numpy()
        if _uninformative(criterion, va, vb, cfg):
            degenerate += 1
        elif valid.sum() >= 2:
            pairs.append(compare_scores(scorer(va, cfg, rng), scorer(vb, cfg, rng), valid, cfg.branches_per_rollout))
    return _summary(prefix, pairs, degenerate)


def common_prefix(ids_a: Sequence[int], ids_b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(ids_a), len(ids_b))
    a, b = np.asarray(ids_a[:n]), np.asarray(ids_b[:n])
    diff = np.flatnonzero(a != b)
    return int(diff[0]) if len(diff) else n


def paired_prefix_stability(clean: Sequence[tuple[Sequence[int], RolloutView]],
                            faulted: Sequence[tuple[Sequence[int], RolloutView]], cfg: BranchConfig,
                            criterion: str = "appo", prefix: str = "stab/fault",
                            min_tokens: int = 2) -> dict[str, float]:
    """Same seeded episode under the clean and a fault profile: compare each rollout's scores on their shared prefix.

    Each item is (token ids, view) of one rollout; pair k is the same reset seed and sampling
    seed. Per-rollout z-scores span the whole rollout, so a fault that changes the suffix
    (an error message, hostile text, an extra retry turn) moves the scores on the shared
    prefix: that movement is the instability measured. Pairs whose shared prefix has fewer
    than ``min_tokens`` generated tokens are skipped and counted in ``<prefix>_short``; for BS,
    pairs with degenerate Ω on either side are counted in ``<prefix>_degenerate`` and left out.
    """
    if len(clean) != len(faulted):
        raise ValueError(f"paired_prefix_stability needs paired rollouts, got {len(clean)} and {len(faulted)}")
    scorer = POSITION_SCORERS[criterion]
    rng = np.random.default_rng(0)
    pairs, short, degenerate, prefix_share = [], 0, 0, []
    for (ids_c, vc), (ids_f, vf) in zip(clean, faulted):
        n = common_prefix(ids_c, ids_f)
        valid = vc.trainable.cpu().numpy()[:n] & vf.trainable.cpu().numpy()[:n]
        prefix_share.append(n / max(len(ids_c), len(ids_f), 1))
        if _uninformative(criterion, vc, vf, cfg):
            degenerate += 1
            continue
        if valid.sum() < min_tokens:
            short += 1
            continue
        pairs.append(compare_scores(scorer(vc, cfg, rng)[:n], scorer(vf, cfg, rng)[:n], valid, cfg.branches_per_rollout))
    out = _summary(prefix, pairs, degenerate)
    out[f"{prefix}_short"] = float(short)
    out[f"{prefix}_prefix_share"] = float(np.mean(prefix_share)) if prefix_share else float("nan")
    return out


def degenerate_omega_fraction(views: Sequence[RolloutView], cfg: BranchConfig) -> float:
    """Fraction of rollouts whose clipped Ω is missing or flat (BS carries no Ω information there)."""
    return float(np.mean([omega_degenerate(v, cfg) for v in views])) if views else float("nan")

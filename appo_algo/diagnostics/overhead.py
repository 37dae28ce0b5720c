"""What the Branching Score costs: wall time and FLOPs of scoring + selection as a share of the step, extra forward passes.

Wall time is measured; FLOPs are analytic counts (stated per formula below) because CPU
kernels expose no counters: they show the order of magnitude against the model's
2·params FLOPs per token forward (6·params with the backward pass).
"""
from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from typing import Any, Iterator, Sequence

import numpy as np

from appo_algo.branching import BRANCH_SELECTORS, BranchConfig, BranchPlan, RolloutView

# Per generated token: log-ratio 1, chunked discounted scan 4, clamp + exp 2, clip 1, two z-scores 6 each, product 1.
BS_FLOPS_PER_TOKEN = 21
# Full-vocabulary entropy from the sampling logits: p·log p, its sum, per vocabulary entry.
ENTROPY_FLOPS_PER_VOCAB_ENTRY = 3


def scoring_flops(tokens: int, vocab_size: int, with_entropy: bool = True) -> float:
    """FLOPs to score ``tokens`` generated tokens: BS arithmetic plus (optionally) the full-vocabulary entropy."""
    return float(tokens * (BS_FLOPS_PER_TOKEN + (ENTROPY_FLOPS_PER_VOCAB_ENTRY * vocab_size if with_entropy else 0)))


def selection_flops(lengths: Sequence[int]) -> float:
    """Comparisons of the per-rollout sort that ranks candidates: Σ L log2 L."""
    return float(sum(n * math.log2(n) for n in lengths if n > 1))


def model_flops(params: int, forward_tokens: int, trained_tokens: int) -> float:
    """Dense-transformer estimate of a step: 2·P per forward token, 6·P per trained (forward + backward) token."""
    return float(2 * params * forward_tokens + 6 * params * trained_tokens)


@contextlib.contextmanager
def count_forward_calls(policy: Any) -> Iterator[Counter]:
    """Count ``policy.forward`` calls made inside the block (the BS must add none beyond PPO's own passes)."""
    counter: Counter = Counter()
    original = policy.forward

    def counting(*args: Any, **kwargs: Any) -> Any:
        counter["forward"] += 1
        return original(*args, **kwargs)

    policy.forward = counting
    try:
        yield counter
    finally:
        del policy.forward  # drop the instance attribute: the class method is visible again


def measure_selection(views: Sequence[RolloutView], cfg: BranchConfig, selector: str, rng: np.random.Generator,
                      policy: Any = None, vocab_size: int | None = None) -> tuple[BranchPlan, dict[str, float]]:
    """Run one selector, timing it and counting the forward passes it makes (``policy`` given) and its FLOPs.

    Returns the plan and ``overhead/select_s``, ``overhead/extra_forward_passes``,
    ``overhead/score_flops`` (BS arithmetic; the entropy is taken from the sampling logits
    and reported separately as ``overhead/entropy_flops``) and ``overhead/select_flops``.
    """
    if selector not in BRANCH_SELECTORS:
        raise ValueError(f"unknown selector {selector!r}; choose one of {sorted(BRANCH_SELECTORS)}")
    tokens = int(sum(int(v.trainable.sum()) for v in views))
    watch = count_forward_calls(policy) if policy is not None else contextlib.nullcontext(Counter())
    with watch as calls:
        t0 = time.perf_counter()
        plan = BRANCH_SELECTORS[selector](list(views), cfg, rng)
        elapsed = time.perf_counter() - t0
    scores = selector in ("appo", "entropy", "tool_boundary")
    metrics = {
        "overhead/select_s": elapsed,
        "overhead/extra_forward_passes": float(calls["forward"]),
        "overhead/score_flops": scoring_flops(tokens, 0, with_entropy=False) if selector == "appo" else 0.0,
        "overhead/entropy_flops": scoring_flops(tokens, vocab_size or 0) - scoring_flops(tokens, 0) if scores else 0.0,
        "overhead/select_flops": selection_flops([v.entropy.shape[0] for v in views]) if selector != "none" else 0.0,
        "overhead/scored_tokens": float(tokens),
    }
    return plan, metrics

"""Diagnostics on constructed inputs with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from appo_algo.branching import BranchConfig, RolloutView, Segment
from appo_algo.diagnostics import (batched, common_prefix, count_forward_calls, degenerate_omega_fraction,
                                   location_histogram, measure_selection, oracle_check, oracle_impact,
                                   paired_prefix_stability, rank_agreement, rescoring_stability, spearman,
                                   token_locations, topb_jaccard)
from appo_algo.diagnostics.overhead import BS_FLOPS_PER_TOKEN, ENTROPY_FLOPS_PER_VOCAB_ENTRY, scoring_flops
from appo_algo.diagnostics.ranking import bootstrap_ci, rankdata

R, C, A, T = int(Segment.REASONING), int(Segment.TOOL_CALL), int(Segment.ANSWER), int(Segment.TOOL_RESPONSE)


def make_view(entropy, segment, skip=None, boundary=(), logp_old=None, logp_new=None, group=0) -> RolloutView:
    n = len(entropy)
    seg = torch.tensor(segment)
    trainable = seg != T
    bnd = torch.zeros(n, dtype=torch.bool)
    bnd[list(boundary)] = True
    return RolloutView(entropy=torch.tensor(entropy, dtype=torch.float32),
                       logp_old=torch.zeros(n) if logp_old is None else torch.tensor(logp_old, dtype=torch.float32),
                       logp_new=None if logp_new is None else torch.tensor(logp_new, dtype=torch.float32),
                       trainable=trainable, skip=torch.zeros(n, dtype=torch.bool) if skip is None else torch.tensor(skip),
                       segment=seg, turn=torch.zeros(n, dtype=torch.long), tool_boundary=bnd, group=group)


# --- rank statistics -----------------------------------------------------------------------------


def test_rank_statistics_known_values():
    assert rankdata(np.array([10.0, 20.0, 20.0, 5.0])).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert spearman(np.arange(5), np.arange(5) ** 3) == pytest.approx(1.0)
    assert spearman(np.arange(5), -np.arange(5)) == pytest.approx(-1.0)
    assert math.isnan(spearman(np.ones(4), np.arange(4)))
    assert topb_jaccard(np.array([5, 4, 3, 0, 0.0]), np.array([5, 0, 3, 4, 0.0]), 2) == pytest.approx(1 / 3)
    lo, hi = bootstrap_ci(lambda idx: float(np.mean(np.arange(50)[idx])), 50, np.random.default_rng(0), 400)
    assert lo < 24.5 < hi


# --- locations -----------------------------------------------------------------------------------

# prompt | reasoning "x" " " | tool call ×2 | tool response ×2 | after-tool ×3 | reasoning | answer ×2
SEG = [T, R, R, C, C, T, T, R, R, R, R, A, A]
SKIP = [False, False, True, False, False, False, False, False, False, False, False, False, False]


def test_token_locations_and_histogram():
    view = make_view([0.5] * len(SEG), SEG, skip=SKIP, boundary=[7])
    locs = token_locations(view, after_tool_window=3)
    assert locs == [None, "reasoning", "ws_punct", "tool_args", "tool_args", None, None,
                    "after_tool", "after_tool", "after_tool", "reasoning", "answer", "answer"]
    hist = location_histogram([view], [(0, 1), (0, 3), (0, 7), (0, 11)])
    assert hist["loc/reasoning"] == hist["loc/tool_args"] == hist["loc/after_tool"] == hist["loc/answer"] == 0.25
    assert hist["loc/ws_punct"] == 0.0 and hist["loc/points"] == 4
    assert hist["loc/tool_boundary_share"] == 0.25
    with pytest.raises(ValueError, match="tool-response"):
        location_histogram([view], [(0, 5)])


# --- stability -----------------------------------------------------------------------------------


def _scored_view(logp_new, entropy=(0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6)):
    n = len(entropy)
    return make_view(list(entropy), [R] * n, logp_old=[0.0] * n, logp_new=list(logp_new))


def test_rescoring_identical_is_perfectly_stable_and_a_reversed_omega_is_not():
    up = np.linspace(0.0, 0.15, 8)
    cfg = BranchConfig(branches_per_rollout=2, clip=(0.8, 1.2))
    same = rescoring_stability([_scored_view(up)], [_scored_view(up)], cfg)
    assert same["stab/rescore_jaccard"] == 1.0 and same["stab/rescore_spearman"] == pytest.approx(1.0)
    flipped = rescoring_stability([_scored_view(up)], [_scored_view(-up)], cfg)
    assert flipped["stab/rescore_spearman"] < 0.0


def test_degenerate_omega_pairs_are_left_out_of_bs_stability():
    cfg = BranchConfig(branches_per_rollout=2)
    flat = _scored_view(np.zeros(8))  # π_θ = π_old: Ω ≡ 1, BS falls back to entropy
    moved = _scored_view(np.linspace(0, 0.1, 8))
    out = rescoring_stability([flat, moved], [flat, moved], cfg)
    assert out["stab/rescore_degenerate"] == 1.0 and out["stab/rescore_pairs"] == 1.0
    only_flat = rescoring_stability([flat], [flat], cfg)
    assert math.isnan(only_flat["stab/rescore_jaccard"])
    # The entropy criterion has no Ω: every pair counts.
    assert rescoring_stability([flat], [flat], cfg, criterion="entropy", prefix="e")["e_pairs"] == 1.0


def test_paired_prefix_compares_only_the_shared_prefix():
    assert common_prefix([1, 2, 3, 4], [1, 2, 9, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    cfg = BranchConfig(branches_per_rollout=2)
    v = _scored_view(np.linspace(0, 0.1, 8))
    ids = list(range(8))
    out = paired_prefix_stability([(ids, v)], [(ids, v)], cfg)
    assert out["stab/fault_jaccard"] == 1.0 and out["stab/fault_prefix_share"] == 1.0
    # A pair that diverges at token 1 has one shared generated token: too short to rank, counted as such.
    short = paired_prefix_stability([(ids, v)], [([0, 99] + ids[2:], v)], cfg)
    assert short["stab/fault_short"] == 1.0 and short["stab/fault_pairs"] == 0.0


def test_degenerate_omega_fraction():
    cfg = BranchConfig()
    missing = make_view([0.1, 0.5, 0.3], [R, R, R])
    equal = make_view([0.1, 0.5, 0.3], [R, R, R], logp_old=[-1, -2, -3], logp_new=[-1, -2, -3])
    moved = make_view([0.1, 0.5, 0.3], [R, R, R], logp_old=[-1, -2, -3], logp_new=[-1.0, -1.9, -3.0])  # Ω ≈ (1.10, 1.11, 1.0)
    assert degenerate_omega_fraction([missing, equal, moved], cfg) == pytest.approx(2 / 3)


# --- overhead ------------------------------------------------------------------------------------


class CountingPolicy:
    """A policy stand-in whose forward is observable: only the counter is under test."""

    def forward(self, x):
        return x


def test_forward_counter_counts_and_selectors_make_no_forward_pass():
    policy = CountingPolicy()
    with count_forward_calls(policy) as calls:
        policy.forward(1)
        policy.forward(2)
    assert calls["forward"] == 2 and "forward" not in vars(policy)
    view = _scored_view(np.linspace(0, 0.1, 8))
    for selector in ("appo", "entropy", "random", "none"):
        plan, m = measure_selection([view], BranchConfig(branches_per_rollout=2), selector, np.random.default_rng(0),
                                    policy=policy, vocab_size=100)
        assert m["overhead/extra_forward_passes"] == 0.0
        assert len(plan.points) == (0 if selector == "none" else 2)
    assert m["overhead/score_flops"] == 0.0  # "none" scores nothing
    assert scoring_flops(10, 100) == 10 * (BS_FLOPS_PER_TOKEN + ENTROPY_FLOPS_PER_VOCAB_ENTRY * 100)


# --- oracle --------------------------------------------------------------------------------------

DECISION = 5


def toy_continuation(seed: int):
    """Toy policy: the branch token is sampled, the rest decoded greedily; only token 5 has an uncertain outcome.

    Reward = token 5. Branching at 5 resamples it (Bernoulli 0.5); branching before 5 decodes
    it greedily (always the original 1); branching after 5 keeps it. So only position 5 has impact.
    """
    rng = np.random.default_rng(seed)
    return lambda position: float(rng.random() < 0.5) if position == DECISION else 1.0


def test_oracle_gives_the_only_decisive_position_the_top_impact():
    impact, mean = oracle_impact(range(10), batched(toy_continuation(0)), k=16)
    assert int(np.argmax(impact)) == DECISION
    assert np.all(np.delete(impact, DECISION) == 0.0) and impact[DECISION] > 0.2
    with pytest.raises(ValueError, match="k >= 2"):
        oracle_impact([1], batched(toy_continuation(0)), k=1)


def test_oracle_check_ranks_the_criterion_that_peaks_at_the_decision_first():
    n = 12
    entropy = [0.1] * n
    entropy[DECISION] = 2.0  # the uncertain token is the high-entropy one
    view = make_view(entropy, [R] * n)
    res = oracle_check([view], [batched(toy_continuation(1))], BranchConfig(branches_per_rollout=1), n_candidates=n,
                       k=16, rng=np.random.default_rng(0), b=1, criteria=("entropy", "random"), n_boot=200)
    m = res.metrics
    assert m["oracle/positions"] == n
    assert m["oracle/entropy_precision"] == 1.0
    assert m["oracle/entropy_spearman"] > 0.25
    assert m["oracle/entropy_spearman_lo"] <= m["oracle/entropy_spearman"] <= m["oracle/entropy_spearman_hi"]


def test_rank_agreement_perfect_and_inverted():
    impact = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    m = rank_agreement(impact, {"good": impact * 3, "bad": -impact}, b=2, rng=np.random.default_rng(0), n_boot=100)
    assert m["oracle/good_spearman"] == pytest.approx(1.0) and m["oracle/good_precision"] == 1.0
    assert m["oracle/bad_spearman"] == pytest.approx(-1.0) and m["oracle/bad_precision"] == 0.0

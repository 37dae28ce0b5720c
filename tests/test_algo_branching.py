"""Branch selectors: candidate filters, top-B vs pooled selection, token semantics, ARPO events, fallbacks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from appo_algo.branching import (
    BRANCH_SELECTORS,
    BranchConfig,
    BranchPoint,
    RolloutView,
    Segment,
)

T = Segment.TOOL_RESPONSE


def make_view(
    entropy,
    *,
    logp_new=None,
    trainable=None,
    skip=None,
    segment=None,
    turn=None,
    tool_boundary=None,
    group: int = 0,
) -> RolloutView:
    """A view with logp_old = 0, so logp_new is the log-ratio directly."""
    h = torch.tensor(entropy, dtype=torch.float32)
    n = h.shape[0]
    seg = torch.tensor(segment if segment is not None else [Segment.REASONING] * n)
    return RolloutView(
        entropy=h,
        logp_old=torch.zeros(n),
        logp_new=None if logp_new is None else torch.tensor(logp_new, dtype=torch.float32),
        trainable=torch.tensor(trainable) if trainable is not None else seg != T,
        skip=torch.tensor(skip) if skip is not None else torch.zeros(n, dtype=torch.bool),
        segment=seg,
        turn=torch.tensor(turn) if turn is not None else torch.zeros(n, dtype=torch.long),
        tool_boundary=torch.tensor(tool_boundary) if tool_boundary is not None else torch.zeros(n, dtype=torch.bool),
        group=group,
    )


def run(name: str, views, rng_seed: int = 0, **cfg):
    return BRANCH_SELECTORS[name](views, BranchConfig(**cfg), np.random.default_rng(rng_seed))


def positions(plan) -> list[tuple[int, int]]:
    return [(p.rollout, p.position) for p in plan.points]


# Ω = [1.0, 1.1, 1.3, 0.9] with γ = 1 and logp_old = 0: log ρ_i = ln Ω_i − ln Ω_{i+1}.
OMEGA = [1.0, 1.1, 1.3, 0.9]
LOG_RATIO = [math.log(OMEGA[i]) - (math.log(OMEGA[i + 1]) if i + 1 < 4 else 0.0) for i in range(4)]
# With H = [1, 2, 3, 4] and clip [1, 1.2] (see test_algo_scoring):
#   Z(Ω) = [−0.905, 0.302, 1.508, −0.905], Z(H) = [−1.342, −0.447, 0.447, 1.342],
#   BS   = [ 1.214, −0.135, 0.674, −1.214].
H4 = [1.0, 2.0, 3.0, 4.0]


# ---------------------------------------------------------------- config and view validation


def test_registry_names():
    assert set(BRANCH_SELECTORS) == {"none", "random", "entropy", "tool_boundary", "appo"}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"selection": "global"}, "selection"),
        ({"token_semantics": "skip"}, "token_semantics"),
        ({"clip": (1.2, 1.0)}, "clip"),
        ({"gamma": 1.5}, "gamma"),
        ({"branches_per_rollout": -1}, ">= 0"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BranchConfig(**kwargs)


def test_view_rejects_trainable_tool_response_and_shape_mismatch():
    with pytest.raises(ValueError, match="tool-response"):
        make_view([1.0, 2.0], segment=[0, T], trainable=[True, True])
    with pytest.raises(ValueError, match="shape"):
        RolloutView(torch.zeros(3), torch.zeros(2), None, torch.ones(3, dtype=torch.bool),
                    torch.zeros(3, dtype=torch.bool), torch.zeros(3), torch.zeros(3),
                    torch.zeros(3, dtype=torch.bool), 0)
    with pytest.raises(ValueError, match="bool"):
        RolloutView(torch.zeros(3), torch.zeros(3), None, torch.ones(3), torch.zeros(3, dtype=torch.bool),
                    torch.zeros(3), torch.zeros(3), torch.zeros(3, dtype=torch.bool), 0)


# ---------------------------------------------------------------- none / entropy


def test_none_selects_nothing():
    plan = run("none", [make_view(H4)])
    assert plan.points == [] and plan.metrics["branch/points"] == 0.0


def test_entropy_top_b_resample_and_keep():
    # H = [0.1, 0.9, 0.5, 0.7, 0.2]: ranking by Z(H) is 1 > 3 > 2 > 4 > 0; top-2 = tokens 1 and 3.
    view = make_view([0.1, 0.9, 0.5, 0.7, 0.2])
    assert positions(run("entropy", [view], branches_per_rollout=2)) == [(0, 1), (0, 3)]
    # "keep": token i is kept, the first regenerated token is i + 1.
    assert positions(run("entropy", [view], branches_per_rollout=2, token_semantics="keep")) == [(0, 2), (0, 4)]


def test_keep_semantics_needs_a_generated_next_token():
    # Token 2 has the top entropy but is followed by a tool response (token 3), and token 5 is
    # the last token: under "keep" neither can be a branch token; next best is token 4 (0.6),
    # so the first regenerated token is 5. "resample" takes token 2 itself.
    view = make_view([0.1, 0.5, 0.9, 9.0, 0.6, 0.8], segment=[0, 0, 1, T, 0, 0])
    assert positions(run("entropy", [view], branches_per_rollout=1)) == [(0, 2)]
    assert positions(run("entropy", [view], branches_per_rollout=1, token_semantics="keep")) == [(0, 5)]


def test_tool_response_tokens_are_never_selected():
    # The tool response carries a huge "entropy" and would win any ranking if it were eligible.
    view = make_view([0.1, 100.0, 100.0, 0.3, 0.2], segment=[0, T, T, 0, 0])
    for name in ("entropy", "appo", "random"):
        plan = run(name, [view], branches_per_rollout=3)
        assert {p.position for p in plan.points} == {0, 3, 4}, name


# ---------------------------------------------------------------- APPO Branching Score


def test_appo_ranks_by_branching_score():
    # BS = [1.214, −0.135, 0.674, −1.214]: top-1 is token 0 (both z-scores negative!).
    view = make_view(H4, logp_new=LOG_RATIO)
    plan = run("appo", [view], branches_per_rollout=1, gamma=1.0)
    assert positions(plan) == [(0, 0)]
    assert plan.metrics["branch/omega_degenerate_frac"] == 0.0
    # The entropy-only ablation picks the highest Z(H): token 3.
    assert positions(run("entropy", [view], branches_per_rollout=1)) == [(0, 3)]


def test_appo_candidate_filter_and_top_up():
    # Filter: Z(H) > 0 and Z(Ω) > 0 (and BS > 0) holds only at token 2. B = 1 -> token 2.
    view = make_view(H4, logp_new=LOG_RATIO)
    assert positions(run("appo", [view], branches_per_rollout=1, gamma=1.0, candidate_filter=True)) == [(0, 2)]
    # B = 3: token 2 from the filter, then the top-up by BS among the rest: 0 (1.214), 1 (−0.135).
    plan = run("appo", [view], branches_per_rollout=3, gamma=1.0, candidate_filter=True)
    assert positions(plan) == [(0, 0), (0, 1), (0, 2)]
    assert plan.metrics["branch/topup"] == 2.0


def test_candidate_filter_skips_whitespace_tokens_even_in_top_up():
    # Token 2 (the only filter pass) is whitespace: the top-up ranks the non-skip rest by BS:
    # 0 (1.214) then 1 (−0.135); token 2 is never taken. Without the filter, skip tokens count.
    view = make_view(H4, logp_new=LOG_RATIO, skip=[False, False, True, False])
    plan = run("appo", [view], branches_per_rollout=2, gamma=1.0, candidate_filter=True)
    assert positions(plan) == [(0, 0), (0, 1)]
    plan = run("appo", [view], branches_per_rollout=2, gamma=1.0, candidate_filter=False)
    assert positions(plan) == [(0, 0), (0, 2)]


def test_appo_falls_back_to_entropy_without_updated_policy():
    # logp_new = None (no update yet) and logp_new = logp_old (Ω ≡ 1): both rank by Z(H).
    view_none = make_view(H4)
    view_equal = make_view(H4, logp_new=[0.0] * 4)
    for view in (view_none, view_equal):
        plan = run("appo", [view], branches_per_rollout=1)
        assert positions(plan) == [(0, 3)]
        assert plan.metrics["branch/omega_degenerate_frac"] == 1.0


def test_appo_treats_tiny_omega_noise_as_degenerate():
    # log ρ = [0, −3e-7, 3e-7, 0] (kernel noise under unchanged weights), γ = 1:
    # Ω ≈ [1, 1, 1 + 3e-7, 1], std ≈ 1.3e-7 <= 1e-6·(1 + 1): degenerate, ranked by entropy (token 3).
    noise = [0.0, -3e-7, 3e-7, 0.0]
    plan = run("appo", [make_view(H4, logp_new=noise)], branches_per_rollout=1, gamma=1.0)
    assert plan.metrics["branch/omega_degenerate_frac"] == 1.0
    assert positions(plan) == [(0, 3)]
    # With a tolerance below the noise, the noise is ranked as signal: Z(Ω) = [−0.577 ×2, 1.732, −0.577],
    # BS = Z(Ω)·Z(H) = [0.775, 0.258, 0.775, −0.775]: top-2 tokens 0 and 2 (equal up to rounding).
    plan = run("appo", [make_view(H4, logp_new=noise)], branches_per_rollout=2, gamma=1.0, omega_flat_eps=1e-9)
    assert plan.metrics["branch/omega_degenerate_frac"] == 0.0
    assert positions(plan) == [(0, 0), (0, 2)]


def test_appo_degenerate_fraction_is_per_rollout():
    views = [make_view(H4, logp_new=LOG_RATIO), make_view(H4, logp_new=[0.0] * 4)]
    plan = run("appo", views, branches_per_rollout=1, gamma=1.0)
    assert positions(plan) == [(0, 0), (1, 3)]
    assert plan.metrics["branch/omega_degenerate_frac"] == 0.5


def test_appo_pooled_group_falls_back_as_a_whole():
    # Pooled: one degenerate rollout makes its prompt's pool rank by Z(H) (one score scale per pool).
    views = [make_view(H4, logp_new=LOG_RATIO), make_view(H4, logp_new=[0.0] * 4)]
    plan = run("appo", views, selection="pooled", budget_per_prompt=2, gamma=1.0)
    assert positions(plan) == [(0, 3), (1, 3)]
    assert plan.metrics["branch/omega_degenerate_frac"] == 1.0


# ---------------------------------------------------------------- per-rollout vs pooled


def test_pooled_selection_takes_top_of_the_prompt():
    # A: H = [1, 2, 3, 4], Z = [−1.342, −0.447, 0.447, 1.342].
    # B: H = [0, 0, 0, 10], mean 2.5, std √18.75 = 4.330, Z = [−0.577, −0.577, −0.577, 1.732].
    # Pooled, budget 3: B3 (1.732), A3 (1.342), A2 (0.447). Per-rollout B = 1: A3 and B3.
    # Rollout C is another prompt: its own budget (default B × 1 = 1 per rollout when pooled).
    views = [make_view(H4), make_view([0.0, 0.0, 0.0, 10.0]), make_view([5.0, 1.0, 2.0], group=1)]
    pooled = run("entropy", views[:2], selection="pooled", budget_per_prompt=3)
    assert positions(pooled) == [(0, 2), (0, 3), (1, 3)]
    per_rollout = run("entropy", views[:2], branches_per_rollout=1)
    assert positions(per_rollout) == [(0, 3), (1, 3)]
    default_budget = run("entropy", views, selection="pooled", branches_per_rollout=1)
    assert positions(default_budget) == [(0, 3), (1, 3), (2, 0)]


def test_short_rollouts_are_reported():
    # Rollout 1 has 2 generated tokens: B = 3 cannot be met.
    views = [make_view([0.1, 0.2, 0.3, 0.4]), make_view([0.5, 9.0, 0.6], segment=[0, T, 0])]
    plan = run("entropy", views, branches_per_rollout=3)
    assert len(plan.points) == 5
    assert plan.metrics["branch/short_frac"] == 0.5


def test_fully_masked_and_empty_inputs():
    masked = make_view([1.0, 2.0, 3.0], segment=[T, T, T])
    cfg = dict(branches_per_rollout=2, vocab_size=100)
    for name in BRANCH_SELECTORS:
        plan = run(name, [masked], **cfg)
        assert plan.points == [], name
        assert all(math.isfinite(v) for v in plan.metrics.values()), name
        assert run(name, [], **cfg).points == [], name


# ---------------------------------------------------------------- random


def test_random_is_uniform_over_eligible_non_skip_tokens_and_seeded():
    # Eligible: tokens 0, 2, 4 (1 is a tool response, 3 is punctuation).
    view = make_view([0.1] * 5, segment=[0, T, 0, 0, 0], skip=[False, False, False, True, False])
    counts = {0: 0, 2: 0, 4: 0}
    rng = np.random.default_rng(123)
    for _ in range(1500):
        (point,) = BRANCH_SELECTORS["random"]([view], BranchConfig(branches_per_rollout=1), rng).points
        counts[point.position] += 1
    assert all(abs(c / 1500 - 1 / 3) < 0.05 for c in counts.values()), counts
    two = run("random", [view], rng_seed=7, branches_per_rollout=2)
    assert len({p.position for p in two.points}) == 2
    assert positions(two) == positions(run("random", [view], rng_seed=7, branches_per_rollout=2))


def test_random_pooled_respects_prompt_budget():
    views = [make_view([0.1] * 4), make_view([0.1] * 4), make_view([0.1] * 4, group=1)]
    plan = run("random", views, selection="pooled", budget_per_prompt=3)
    per_group = [sum(1 for p in plan.points if views[p.rollout].group == g) for g in (0, 1)]
    assert per_group == [3, 3]
    assert len(set(plan.points)) == 6


# ---------------------------------------------------------------- ARPO tool boundary


def arpo_view(h_first: float, h_after: float, group: int = 0) -> RolloutView:
    # Turn 0: 3 generated tokens; 2 tool-response tokens; turn 1: 3 generated tokens from index 5.
    return make_view(
        [h_first] * 3 + [0.0, 0.0] + [h_after] * 3,
        segment=[0, 0, 1, T, T, 0, 0, 2],
        turn=[0, 0, 0, 0, 0, 1, 1, 1],
        tool_boundary=[False] * 5 + [True, False, False],
        group=group,
    )


def test_tool_boundary_probability_formula():
    # k = 2: H_init = 1 + 1 = 2, H_now = 3 + 3 = 6, ΔH = (6 − 2)/ln 55 = 4/4.0073332 = 0.9981701.
    # p = clip(0.5 + 0.2·0.9981701, 0, 1) = 0.6996340.
    plan = run("tool_boundary", [arpo_view(1.0, 3.0)], arpo_k=2, vocab_size=55)
    assert plan.metrics["branch/event_prob_mean"] == pytest.approx(0.6996340, abs=1e-6)
    assert plan.metrics["branch/events"] == 1.0
    # Entropy drop: ΔH = (2 − 6)/ln 55 = −0.9981701 -> p = 0.5 − 0.1996340 = 0.3003660.
    plan = run("tool_boundary", [arpo_view(3.0, 1.0)], arpo_k=2, vocab_size=55)
    assert plan.metrics["branch/event_prob_mean"] == pytest.approx(0.3003660, abs=1e-6)
    # Clip: α = 0.95, ΔH ≈ 1 -> 1.1496 -> 1: always fires, with 2 copies at the boundary.
    plan = run("tool_boundary", [arpo_view(1.0, 3.0)], arpo_k=2, vocab_size=55, arpo_alpha=0.95)
    assert plan.metrics["branch/event_prob_mean"] == 1.0
    assert plan.points == [BranchPoint(0, 5), BranchPoint(0, 5)]


def test_tool_boundary_window_stays_in_the_turn():
    # k = 20 but turn 0 has 3 generated tokens and turn 1 has 3: H_init = 3·1, H_now = 3·2,
    # ΔH = 3/ln 100 = 0.6514417, p = 0.5 + 0.2·0.6514417 = 0.6302883.
    plan = run("tool_boundary", [arpo_view(1.0, 2.0)], arpo_k=20, vocab_size=100)
    assert plan.metrics["branch/event_prob_mean"] == pytest.approx(0.6302883, abs=1e-6)


def test_tool_boundary_fires_at_the_right_rate_and_respects_budget():
    # ΔH = 0 -> p = α = 0.5; 400 single-rollout prompts, 1 event each.
    views = [arpo_view(1.0, 1.0, group=g) for g in range(400)]
    plan = run("tool_boundary", views, vocab_size=100, arpo_copies=1)
    assert abs(plan.metrics["branch/events_fired"] / 400 - 0.5) < 0.08
    # Budget 3 per prompt, 2 copies per event, 2 rollouts that always fire: 2 + 1 points.
    views = [arpo_view(1.0, 1.0), arpo_view(1.0, 1.0)]
    plan = run("tool_boundary", views, vocab_size=100, arpo_alpha=1.0, budget_per_prompt=3)
    assert len(plan.points) == 3
    assert plan.metrics["branch/budget_unused"] == 0.0


def test_tool_boundary_reference_is_per_call():
    # The initial-entropy reference comes from each rollout's own first turn: a plan for
    # view B is the same whether or not view A (very different entropies) was seen before.
    selector = BRANCH_SELECTORS["tool_boundary"]
    cfg = BranchConfig(vocab_size=100, arpo_k=2)
    view_a, view_b = arpo_view(9.0, 0.1), arpo_view(1.0, 3.0)
    selector([view_a], cfg, np.random.default_rng(1))
    after = selector([view_b], cfg, np.random.default_rng(5))
    fresh = selector([view_b], cfg, np.random.default_rng(5))
    assert after.points == fresh.points and after.metrics == fresh.metrics


def test_tool_boundary_needs_vocab_size():
    with pytest.raises(ValueError, match="vocab_size"):
        run("tool_boundary", [arpo_view(1.0, 1.0)])

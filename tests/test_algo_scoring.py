"""Entropy, discounted suffix sums, Ω, z-scores and the Branching Score against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from appo_algo.scoring import (
    branching_score,
    discounted_suffix_sum,
    omega,
    omega_is_degenerate,
    token_entropy,
    zscore,
)

LN2 = math.log(2.0)


def naive_suffix_sum(x: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """O(L²) reference: S_i = Σ_{j≥i} γ^(j−i) mask_j x_j, in float64."""
    length = x.shape[-1]
    out = torch.zeros(x.shape, dtype=torch.float64)
    for i in range(length):
        for j in range(i, length):
            out[..., i] += gamma ** (j - i) * x[..., j].double() * mask[..., j]
    return out


# ---------------------------------------------------------------- entropy


def test_entropy_uniform_and_two_point():
    # Uniform over 4: H = ln 4 = 1.3862944.
    # p = [1/4, 3/4] from logits [0, ln 3]: H = −(0.25 ln 0.25 + 0.75 ln 0.75)
    #   = 0.25·1.3862944 + 0.75·0.2876821 = 0.3465736 + 0.2157616 = 0.5623351.
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -math.inf, -math.inf]])
    h = token_entropy(logits)
    assert h.tolist() == pytest.approx([1.3862944, 0.5623351], abs=1e-6)


def test_entropy_temperature_divides_logits():
    # logits [0, 2 ln 3] at τ = 2 become [0, ln 3]: the same p = [1/4, 3/4], H = 0.5623351.
    h = token_entropy(torch.tensor([0.0, 2 * math.log(3.0)]), temperature=2.0)
    assert float(h) == pytest.approx(0.5623351, abs=1e-6)


def test_entropy_stable_for_huge_logits_and_masked_vocab():
    # [1e4, 1e4, -inf]: softmax = [1/2, 1/2, 0] -> H = ln 2, no overflow, no 0·(−inf) NaN.
    h = token_entropy(torch.tensor([1e4, 1e4, -math.inf]))
    assert float(h) == pytest.approx(LN2, abs=1e-6)


def test_entropy_rejects_non_positive_temperature():
    with pytest.raises(ValueError, match="temperature"):
        token_entropy(torch.zeros(3), temperature=0.0)


# ---------------------------------------------------------------- discounted suffix sum


def test_suffix_sum_hand_values():
    # x = [1, 2, 3], γ = 0.5: S2 = 3; S1 = 2 + 0.5·3 = 3.5; S0 = 1 + 0.5·2 + 0.25·3 = 2.75.
    x = torch.tensor([1.0, 2.0, 3.0])
    assert discounted_suffix_sum(x, None, 0.5).tolist() == pytest.approx([2.75, 3.5, 3.0])


def test_suffix_sum_masked_positions_count_in_distance():
    # mask [T, F, T]: the middle value is dropped but still separates the others:
    # S2 = 3; S1 = 0 + 0.5·3 = 1.5; S0 = 1 + 0.5²·3 = 1.75.
    x = torch.tensor([1.0, 2.0, 3.0])
    mask = torch.tensor([True, False, True])
    assert discounted_suffix_sum(x, mask, 0.5).tolist() == pytest.approx([1.75, 1.5, 3.0])


def test_suffix_sum_gamma_one_is_reverse_cumsum():
    # γ = 1: S = [1+2+3, 2+3, 3] = [6, 5, 3].
    assert discounted_suffix_sum(torch.tensor([1.0, 2.0, 3.0]), None, 1.0).tolist() == [6.0, 5.0, 3.0]


@pytest.mark.parametrize("gamma", [2.0 ** (-1 / 32), 0.9, 0.5, 0.01])
@pytest.mark.parametrize("length", [1, 7, 130])
def test_suffix_sum_matches_quadratic_reference(gamma, length):
    # γ = 0.5 makes chunks of 60 and γ = 0.01 chunks of 9: the carry between chunks is exercised.
    gen = torch.Generator().manual_seed(length)
    x = torch.randn(3, length, generator=gen)
    mask = torch.rand(3, length, generator=gen) > 0.3
    got = discounted_suffix_sum(x, mask, gamma)
    assert torch.allclose(got.double(), naive_suffix_sum(x, mask, gamma), atol=1e-5)


def test_suffix_sum_edge_cases_and_errors():
    assert discounted_suffix_sum(torch.zeros(2, 0), None, 0.5).shape == (2, 0)
    with pytest.raises(ValueError, match="gamma"):
        discounted_suffix_sum(torch.zeros(3), None, 0.0)
    with pytest.raises(ValueError, match="mask shape"):
        discounted_suffix_sum(torch.zeros(3), torch.ones(2, dtype=torch.bool), 0.5)


# ---------------------------------------------------------------- Ω


def test_omega_hand_values():
    # log ρ = [ln 2, 0, −ln 2], γ = 0.5:
    # S2 = −ln 2; S1 = 0.5·(−ln 2); S0 = ln 2 + 0.25·(−ln 2) = 0.75 ln 2.
    # Ω = [2^0.75, 2^−0.5, 2^−1] = [1.6817928, 0.7071068, 0.5].
    logp_old = torch.tensor([-1.0, -2.0, -0.5])
    logp_new = logp_old + torch.tensor([LN2, 0.0, -LN2])
    om = omega(logp_new, logp_old, torch.ones(3, dtype=torch.bool), gamma=0.5)
    assert om.tolist() == pytest.approx([1.6817928, 0.7071068, 0.5], rel=1e-6)


def test_omega_clamps_exponent_and_ignores_masked_garbage():
    # Token 1 is a tool response with non-finite log-probs: ignored. Token 2 has log ρ = 30:
    # its exponent is clamped to 20, so Ω2 = e^20; S0 = 0 + 0 + 0.25·30 = 7.5 (< 20, unclamped).
    logp_old = torch.tensor([0.0, math.nan, 0.0])
    logp_new = torch.tensor([0.0, -math.inf, 30.0])
    mask = torch.tensor([True, False, True])
    om = omega(logp_new, logp_old, mask, gamma=0.5, clamp=20.0)
    assert torch.isfinite(om).all()
    assert om[2].item() == pytest.approx(math.exp(20.0), rel=1e-5)
    assert om[0].item() == pytest.approx(math.exp(7.5), rel=1e-5)


def test_omega_is_one_when_policies_equal():
    logp = torch.randn(2, 5)
    om = omega(logp, logp.clone(), torch.ones(2, 5, dtype=torch.bool), gamma=2.0 ** (-1 / 32))
    assert torch.equal(om, torch.ones(2, 5))


# ---------------------------------------------------------------- z-score


def test_zscore_hand_values():
    # [1, 2, 3, 4]: mean 2.5, population std √1.25 = 1.1180340:
    # Z = [−1.5, −0.5, 0.5, 1.5]/1.1180340 = [−1.3416408, −0.4472136, 0.4472136, 1.3416408].
    z = zscore(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.ones(4, dtype=torch.bool))
    assert z.tolist() == pytest.approx([-1.3416408, -0.4472136, 0.4472136, 1.3416408], abs=1e-6)


def test_zscore_uses_valid_positions_only():
    # Valid [1, 2, 3] (100 is a tool response): mean 2, std √(2/3) = 0.8164966:
    # Z = [−1/0.8164966, 0, (invalid) 0, 1/0.8164966] = [−1.2247449, 0, 0, 1.2247449].
    z = zscore(torch.tensor([1.0, 2.0, 100.0, 3.0]), torch.tensor([True, True, False, True]))
    assert z.tolist() == pytest.approx([-1.2247449, 0.0, 0.0, 1.2247449], abs=1e-6)


def test_zscore_constant_empty_and_single_rows_are_zero():
    x = torch.tensor([[5.0, 5.0, 5.0], [1.0, 2.0, 3.0], [7.0, 1.0, 2.0]])
    mask = torch.tensor([[True, True, True], [False, False, False], [False, True, False]])
    z = zscore(x, mask)
    assert torch.equal(z, torch.zeros(3, 3))


def test_zscore_rows_are_independent():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 10.0, 10.0, 10.0]])
    z = zscore(x, torch.ones(2, 4, dtype=torch.bool))
    assert z[0].tolist() == pytest.approx([-1.3416408, -0.4472136, 0.4472136, 1.3416408], abs=1e-6)
    assert z[1].tolist() == [0.0] * 4


# ---------------------------------------------------------------- Branching Score


def test_branching_score_hand_values():
    # Ω = [1.0, 1.1, 1.3, 0.9] clipped to [1, 1.2] -> [1.0, 1.1, 1.2, 1.0]: mean 1.075,
    # deviations [−0.075, 0.025, 0.125, −0.075], var = 0.0275/4 = 0.006875, std 0.0829156,
    # Z(Ω) = [−0.9045340, 0.3015113, 1.5075567, −0.9045340].
    # H = [1, 2, 3, 4]: Z(H) = [−1.3416408, −0.4472136, 0.4472136, 1.3416408].
    # BS = Z(Ω)·Z(H) = [1.2135598, −0.1348400, 0.6741999, −1.2135598].
    om = torch.tensor([1.0, 1.1, 1.3, 0.9])
    h = torch.tensor([1.0, 2.0, 3.0, 4.0])
    bs = branching_score(om, h, torch.ones(4, dtype=torch.bool), clip=(1.0, 1.2))
    assert bs.tolist() == pytest.approx([1.2135598, -0.1348400, 0.6741999, -1.2135598], abs=1e-5)


def test_branching_score_code_clip_range():
    # Code clip [0.8, 1.2] keeps 0.9: [1.0, 1.1, 1.2, 0.9]: mean 1.05, deviations
    # [−0.05, 0.05, 0.15, −0.15], var = (0.0025+0.0025+0.0225+0.0225)/4 = 0.0125, std 0.1118034,
    # Z(Ω) = [−0.4472136, 0.4472136, 1.3416408, −1.3416408]; BS·: [0.6, −0.2, 0.6, −1.8].
    om = torch.tensor([1.0, 1.1, 1.3, 0.9])
    h = torch.tensor([1.0, 2.0, 3.0, 4.0])
    bs = branching_score(om, h, torch.ones(4, dtype=torch.bool), clip=(0.8, 1.2))
    assert bs.tolist() == pytest.approx([0.6, -0.2, 0.6, -1.8], abs=1e-5)


def test_branching_score_zero_and_degenerate_when_policies_equal():
    logp = torch.randn(3, 6)
    mask = torch.ones(3, 6, dtype=torch.bool)
    om = omega(logp, logp.clone(), mask, gamma=2.0 ** (-1 / 32))
    bs = branching_score(om, torch.rand(3, 6), mask)
    assert torch.equal(bs, torch.zeros(3, 6))
    assert omega_is_degenerate(om, mask, clip=(1.0, 1.2)).tolist() == [True, True, True]


def test_omega_degenerate_detection():
    mask = torch.tensor([[True] * 4, [True] * 4, [True] * 4, [True, False, False, False]])
    om = torch.tensor(
        [
            [1.0, 1.1, 1.3, 0.9],  # varies inside the clip range: informative
            [0.5, 0.7, 0.9, 0.95],  # all below 1: clip to [1, 1.2] flattens it
            [1.0, 1.0, 1.0, 1.0],  # π_θ = π_old
            [1.0, 2.0, 3.0, 4.0],  # one valid token: nothing to rank
        ]
    )
    assert omega_is_degenerate(om, mask, clip=(1.0, 1.2)).tolist() == [False, True, True, True]
    assert omega_is_degenerate(om, mask).tolist() == [False, False, True, True]

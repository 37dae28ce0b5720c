"""GRPO and dual-group advantages (both readings) and the future-KL weight against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from appo_algo.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageBatch,
    AdvantageConfig,
    apply_future_kl,
    dual_group_advantages,
    future_kl_weight,
    grpo_advantages,
    group_standardize,
)

def batch(rewards, group=None, seq_len=3, lengths=None, **kw) -> AdvantageBatch:
    n = len(rewards)
    as_tensor = {k: (torch.tensor(v) if v is not None else None) for k, v in kw.items()}
    return AdvantageBatch(
        rewards=torch.tensor(rewards, dtype=torch.float32),
        group=torch.tensor(group if group is not None else [0] * n),
        lengths=torch.tensor(lengths if lengths is not None else [seq_len] * n),
        seq_len=seq_len,
        **as_tensor,
    )


# ---------------------------------------------------------------- group standardisation / GRPO


def test_group_standardize_population_and_unbiased():
    # R = [1, 0, 0, 1]: mean 0.5; population std 0.5 -> ±0.5/0.500001 = ±0.999998;
    # unbiased std √(1/3) = 0.5773503 -> ±0.5/0.5773513 = ±0.8660239.
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    g = torch.zeros(4, dtype=torch.long)
    pop, frac = group_standardize(r, g, std="population")
    assert pop.tolist() == pytest.approx([0.999998, -0.999998, -0.999998, 0.999998], abs=1e-6)
    assert frac == 0.0
    unb, _ = group_standardize(r, g, std="unbiased")
    assert unb.tolist() == pytest.approx([0.8660239, -0.8660239, -0.8660239, 0.8660239], abs=1e-6)


def test_group_standardize_zero_variance_group_and_arbitrary_ids():
    # Group 7: [1, 1] has zero variance -> 0. Group 3: [0, 1]: mean 0.5, std 0.5 -> [−1, 1].
    r = torch.tensor([1.0, 1.0, 0.0, 1.0])
    scores, frac = group_standardize(r, torch.tensor([7, 7, 3, 3]))
    assert scores.tolist() == pytest.approx([0.0, 0.0, -0.999998, 0.999998], abs=1e-6)
    assert frac == 0.5


def test_group_standardize_excludes_invalid_members():
    # Member 3 (reward 5) is an infrastructure failure: stats over [1, 0, 0]: mean 1/3,
    # population std √(2/9) = 0.4714045; z = [0.6666667, −0.3333333, −0.3333333]/0.4714055
    # = [1.4142106, −0.7071053, −0.7071053]; the invalid member gets 0.
    r = torch.tensor([1.0, 0.0, 0.0, 5.0])
    valid = torch.tensor([True, True, True, False])
    scores, _ = group_standardize(r, torch.zeros(4, dtype=torch.long), valid)
    assert scores.tolist() == pytest.approx([1.4142106, -0.7071053, -0.7071053, 0.0], abs=1e-6)


def test_unbiased_std_of_a_lone_member_is_zero_not_nan():
    scores, frac = group_standardize(torch.tensor([3.0, 1.0]), torch.tensor([0, 1]), std="unbiased")
    assert scores.tolist() == [0.0, 0.0] and frac == 1.0


def test_grpo_broadcasts_over_tokens_and_masks_padding():
    # R = [1, 0]: z = [1, −1] (≈ ±0.999998); rollout 1 has 2 tokens of 3.
    adv, metrics = grpo_advantages(batch([1.0, 0.0], lengths=[3, 2]), AdvantageConfig())
    expected = [[0.999998] * 3, [-0.999998, -0.999998, 0.0]]
    assert adv.tolist() == [pytest.approx(row, abs=1e-6) for row in expected]
    assert metrics["adv/zero_std_frac"] == 0.0


def test_grpo_all_equal_rewards_give_zero_and_report():
    adv, metrics = grpo_advantages(batch([1.0, 1.0, 0.3, 0.3], group=[0, 0, 1, 1]), AdvantageConfig())
    assert torch.equal(adv, torch.zeros(4, 3))
    assert metrics["adv/zero_std_frac"] == 1.0


def test_grpo_with_branches_pools_them_into_one_group():
    # "Without dual-group" ablation: initial [1, 0] and branches [1, 1] form one group
    # [1, 0, 1, 1]: mean 0.75, std √0.1875 = 0.4330127;
    # initial z = [0.25/0.4330137, −0.75/0.4330137] = [0.5773489, −1.7320468].
    b = batch([1.0, 0.0], seq_len=1, branch_rewards=[1.0, 1.0], branch_parent=[0, 1], branch_position=[0, 0])
    adv, _ = grpo_advantages(b, AdvantageConfig())
    assert adv[:, 0].tolist() == pytest.approx([0.5773489, -1.7320468], abs=1e-6)


def test_config_and_batch_validation():
    with pytest.raises(ValueError, match="std"):
        AdvantageConfig(std="sample")
    with pytest.raises(ValueError, match="dual_group"):
        AdvantageConfig(dual_group="both")
    with pytest.raises(ValueError, match="branch_parent"):
        dual_group_advantages(batch([1.0, 0.0], branch_rewards=[1.0]), AdvantageConfig())
    with pytest.raises(ValueError, match="index"):
        dual_group_advantages(
            batch([1.0, 0.0], branch_rewards=[1.0], branch_parent=[2], branch_position=[1]), AdvantageConfig()
        )
    assert set(ADVANTAGE_ESTIMATORS) == {"grpo", "appo"}


# ---------------------------------------------------------------- dual group


def test_dual_group_paper_reading():
    # Initial [1, 0]: z_init = [1, −1]. Branches [1, 0, 0, 0]: mean 0.25, std 0.4330127;
    # R_n against the branch group: (1 − 0.25)/0.4330137 = 1.7320468, (0 − 0.25)/0.4330137 = −0.5773489.
    # A = mean of the two: [(0.999998 + 1.7320468)/2, (−0.999998 − 0.5773489)/2] = [1.3660224, −0.7886735].
    b = batch([1.0, 0.0], seq_len=2, branch_rewards=[1.0, 0.0, 0.0, 0.0], branch_parent=[0, 0, 1, 1],
              branch_position=[1, 1, 1, 1])
    adv, metrics = dual_group_advantages(b, AdvantageConfig(dual_group="paper"))
    assert adv.tolist() == [pytest.approx([1.3660224] * 2, abs=1e-5), pytest.approx([-0.7886735] * 2, abs=1e-5)]
    assert metrics["adv/branch_zero_std_frac"] == 0.0


def test_dual_group_paper_flat_groups():
    # Flat branch group (all 1): no scale to standardise by -> A = z_init = [1, −1].
    b = batch([1.0, 0.0], seq_len=1, branch_rewards=[1.0, 1.0], branch_parent=[0, 1], branch_position=[0, 0])
    adv, metrics = dual_group_advantages(b, AdvantageConfig(dual_group="paper"))
    assert adv[:, 0].tolist() == pytest.approx([0.999998, -0.999998], abs=1e-6)
    assert metrics["adv/branch_zero_std_frac"] == 1.0
    # Flat initial group [0, 0], branches [1, 0] (mean 0.5, std 0.5): A = (0 − 0.5)/0.500001 = −0.999998.
    b = batch([0.0, 0.0], seq_len=1, branch_rewards=[1.0, 0.0], branch_parent=[0, 1], branch_position=[0, 0])
    adv, metrics = dual_group_advantages(b, AdvantageConfig(dual_group="paper"))
    assert adv[:, 0].tolist() == pytest.approx([-0.999998, -0.999998], abs=1e-6)
    assert metrics["adv/zero_std_frac"] == 1.0


def test_dual_group_code_reading_by_split_position():
    # z_init = [1, −1]. Branch rewards [1, 0, 0, 0] -> z_b = [1.7320468, −0.5773489 ×3].
    # Rollout 0, branches at positions 2 (z 1.732) and 4 (z −0.577):
    #   t < 2: mean(1.7320468, −0.5773489) = 0.5773490 -> 0.999998 + 0.5773490 = 1.5773470
    #   t = 2, 3: only the second -> 0.999998 − 0.5773489 = 0.4226491
    #   t = 4, 5: after the last split -> 0.999998
    # Rollout 1 (length 5), branches at 3 and 5, both −0.5773489:
    #   t < 5: −0.999998 − 0.5773489 = −1.5773469; t = 5: padding -> 0.
    b = batch([1.0, 0.0], seq_len=6, lengths=[6, 5], branch_rewards=[1.0, 0.0, 0.0, 0.0],
              branch_parent=[0, 0, 1, 1], branch_position=[2, 4, 3, 5])
    adv, _ = dual_group_advantages(b, AdvantageConfig(dual_group="code"))
    assert adv[0].tolist() == pytest.approx([1.5773470] * 2 + [0.4226491] * 2 + [0.999998] * 2, abs=1e-5)
    assert adv[1].tolist() == pytest.approx([-1.5773469] * 5 + [0.0], abs=1e-5)


def test_dual_group_invalid_rollouts_and_branches():
    # Initial rollout 2 is an infra failure: stats over [1, 0] -> z = [1, −1, 0], row 2 all 0.
    # Branch 1 (reward 7) is an infra failure: branch group = [0] alone -> flat -> z_b = 0,
    # and the invalid branch does not enter the code reading's mean.
    b = batch([1.0, 0.0, 0.5], seq_len=2, valid=[True, True, False], branch_rewards=[0.0, 7.0],
              branch_parent=[0, 0], branch_position=[2, 2], branch_valid=[True, False])
    for reading in ("paper", "code"):
        adv, metrics = dual_group_advantages(b, AdvantageConfig(dual_group=reading))
        assert adv.tolist() == [pytest.approx([0.999998] * 2, abs=1e-6), pytest.approx([-0.999998] * 2, abs=1e-6),
                                [0.0, 0.0]], reading
        assert metrics["adv/invalid_frac"] == pytest.approx(1 / 3)


def test_dual_group_without_branches_equals_grpo():
    b = batch([1.0, 0.0, 0.5, 0.2], group=[0, 0, 1, 1], seq_len=4, lengths=[4, 3, 2, 1])
    for reading in ("paper", "code"):
        adv, _ = dual_group_advantages(b, AdvantageConfig(dual_group=reading))
        assert torch.allclose(adv, grpo_advantages(b, AdvantageConfig())[0])


def test_all_equal_rewards_everywhere_give_zero_without_nan():
    b = batch([1.0, 1.0], seq_len=3, branch_rewards=[1.0, 1.0, 1.0], branch_parent=[0, 1, 1],
              branch_position=[1, 2, 3])
    for reading in ("paper", "code"):
        adv, metrics = dual_group_advantages(b, AdvantageConfig(dual_group=reading, std="unbiased"))
        assert torch.equal(adv, torch.zeros(2, 3))
        assert metrics["adv/zero_std_frac"] == 1.0 and metrics["adv/branch_zero_std_frac"] == 1.0


# ---------------------------------------------------------------- future-KL scaling


def test_future_kl_weight_hand_values():
    # log ρ = [ln 1.1, 0, ln 1.2], γ = 0.5: S2 = ln 1.2, S1 = 0.5 ln 1.2, S0 = ln 1.1 + 0.25 ln 1.2.
    # exp: [1.1·1.2^0.25, 1.2^0.5, 1.2] = [1.1512983, 1.0954451, 1.2], all inside [1, 1.2].
    cfg = AdvantageConfig(fut_gamma=0.5)
    logp_old = torch.tensor([[-1.0, -1.0, -1.0]])
    logp_new = logp_old + torch.tensor([[math.log(1.1), 0.0, math.log(1.2)]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    w = future_kl_weight(logp_new, logp_old, mask, cfg)
    assert w[0].tolist() == pytest.approx([1.1512983, 1.0954451, 1.2], abs=1e-6)
    # A = A_base·(1 + 0.5·w) with A_base = 2: [3.1512983, 3.0954451, 3.2].
    adv, metrics = apply_future_kl(torch.full((1, 3), 2.0), logp_new, logp_old, mask, cfg)
    assert adv[0].tolist() == pytest.approx([3.1512983, 3.0954451, 3.2], abs=1e-5)
    assert metrics["adv/fut_weight_max"] == pytest.approx(1.2)


def test_future_kl_weight_clips_below_one_and_is_detached():
    # log ρ = [0, 0, ln 0.5], γ = 0.5: exp(S) = [0.5^0.25, 0.5^0.5, 0.5] = [0.84, 0.71, 0.5] -> clip to 1.
    logp_old = torch.zeros(1, 3)
    logp_new = torch.tensor([[0.0, 0.0, math.log(0.5)]], requires_grad=True)
    mask = torch.ones(1, 3, dtype=torch.bool)
    w = future_kl_weight(logp_new, logp_old, mask, AdvantageConfig(fut_gamma=0.5))
    assert w.tolist() == [[1.0, 1.0, 1.0]]
    assert not w.requires_grad
    adv, _ = apply_future_kl(torch.ones(1, 3), logp_new, logp_old, mask, AdvantageConfig(fut_gamma=0.5))
    assert not adv.requires_grad


def test_future_kl_safety_cap():
    # Code settings b = 1, γ = 1, clip [1, 2]; log ρ = [0, ln 7, 0]: exp(S) = [7, 7, 1] -> clip [2, 2, 1].
    # A_base = −1: token 1 has ρ = 7 > 6 -> its weight is clamped to [0.8, 1.0] -> 1.0;
    # token 0 (ρ = 1) keeps 2. A = −1·(1 + w) = [−3, −2, −2]. With A_base = +1 no cap: [3, 3, 2].
    cfg = AdvantageConfig(fut_b=1.0, fut_gamma=1.0, fut_clip=(1.0, 2.0), safety_cap=True)
    logp_old = torch.zeros(1, 3)
    logp_new = torch.tensor([[0.0, math.log(7.0), 0.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    neg, metrics = apply_future_kl(-torch.ones(1, 3), logp_new, logp_old, mask, cfg)
    assert neg[0].tolist() == pytest.approx([-3.0, -2.0, -2.0], abs=1e-5)
    assert metrics["adv/fut_safety_cap_frac"] == pytest.approx(1 / 3)
    pos, _ = apply_future_kl(torch.ones(1, 3), logp_new, logp_old, mask, cfg)
    assert pos[0].tolist() == pytest.approx([3.0, 3.0, 2.0], abs=1e-5)
    with pytest.raises(ValueError, match="base"):
        future_kl_weight(logp_new, logp_old, mask, cfg)


def test_future_kl_masks_tool_tokens_and_can_be_switched_off():
    # Token 1 is a tool response with garbage log-probs: A there is 0 and nothing is NaN.
    # With γ = 0.5, S0 = 0 + 0.25·ln 1.2 -> w0 = 1.2^0.25 = 1.0466351; A0 = 1 + 0.5·1.0466351 = 1.5233176.
    logp_old = torch.tensor([[0.0, math.nan, 0.0]])
    logp_new = torch.tensor([[0.0, -math.inf, math.log(1.2)]])
    mask = torch.tensor([[True, False, True]])
    adv, _ = apply_future_kl(torch.ones(1, 3), logp_new, logp_old, mask, AdvantageConfig(fut_gamma=0.5))
    assert adv[0].tolist() == pytest.approx([1.5233176, 0.0, 1.6], abs=1e-6)
    off, metrics = apply_future_kl(torch.ones(1, 3), logp_new, logp_old, mask, AdvantageConfig(future_kl=False))
    assert off.tolist() == [[1.0, 0.0, 1.0]] and metrics == {}

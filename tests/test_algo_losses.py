"""PPO-clip loss: clipping, dual clip, k3 KL, aggregation modes, masks and gradients against hand values."""
from __future__ import annotations

import math

import pytest
import torch

from appo_algo.losses import LOSSES, LossConfig, ppo_clip


def ratios_to_logp(ratios) -> torch.Tensor:
    """logp_new for logp_old = 0 and the given ratios, as a leaf that collects gradients."""
    return torch.tensor(ratios, dtype=torch.float32).log().requires_grad_(True)


# Four tokens, ε = 0.2 (clip to [0.8, 1.2]), logp_old = 0:
#   t0: ρ 1.5, A +1: min(1.5, 1.2) = 1.2   -> ℓ = −1.2  (clipped, ∂ℓ/∂logp = 0)
#   t1: ρ 0.5, A +1: min(0.5, 0.8) = 0.5   -> ℓ = −0.5  (∂ℓ/∂logp = −Aρ = −0.5)
#   t2: ρ 1.1, A −1: min(−1.1, −1.1) = −1.1 -> ℓ = 1.1  (∂ℓ/∂logp = −Aρ = 1.1)
#   t3: ρ 0.7, A −1: min(−0.7, −0.8) = −0.8 -> ℓ = 0.8  (clipped, ∂ℓ/∂logp = 0)
RATIOS = [1.5, 0.5, 1.1, 0.7]
ADVS = [1.0, 1.0, -1.0, -1.0]


def test_ppo_clip_token_mean_hand_values_and_gradient():
    # token_mean = (−1.2 − 0.5 + 1.1 + 0.8)/4 = 0.2/4 = 0.05; clip_frac = 2/4.
    logp_new = ratios_to_logp([RATIOS])
    loss, metrics = ppo_clip(logp_new, torch.zeros(1, 4), torch.tensor([ADVS]), torch.ones(1, 4, dtype=torch.bool),
                             LossConfig(aggregation="token_mean"))
    assert loss.item() == pytest.approx(0.05, abs=1e-6)
    assert metrics["train/clip_frac"] == 0.5
    # approx_kl = mean(−log ρ) = −ln(1.5·0.5·1.1·0.7)/4 = −ln(0.5775)/4 = 0.549047/4 = 0.1372617.
    assert metrics["train/approx_kl"] == pytest.approx(0.1372617, abs=1e-6)
    loss.backward()
    # Gradients divided by 4 tokens: [0, −0.5/4, 1.1/4, 0].
    assert logp_new.grad[0].tolist() == pytest.approx([0.0, -0.125, 0.275, 0.0], abs=1e-6)


def two_rows():
    # Row 0: t0, t1 and a masked tool token; row 1: t2, t3 and t4 (ρ 1, A 0.5 -> ℓ = −0.5).
    logp_new = ratios_to_logp([[1.5, 0.5, 1.0], [1.1, 0.7, 1.0]])
    adv = torch.tensor([[1.0, 1.0, 123.0], [-1.0, -1.0, 0.5]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    return logp_new, torch.zeros(2, 3), adv, mask


@pytest.mark.parametrize(
    "aggregation, normalizer, expected",
    [
        # Σ ℓ / tokens = (−1.2 − 0.5 + 1.1 + 0.8 − 0.5)/5 = −0.3/5 = −0.06
        ("token_mean", None, -0.06),
        # given global token count 10: −0.3/10
        ("token_mean", 10.0, -0.03),
        # row means: −1.7/2 = −0.85 and 1.4/3 = 0.4666667; mean of rows = −0.3833333/2 = −0.1916667
        ("seq_mean", None, -0.1916667),
        # paper: Σ row means / M = −0.3833333/4 = −0.0958333
        ("seq_mean_div_M", 4.0, -0.0958333),
    ],
)
def test_aggregation_modes(aggregation, normalizer, expected):
    logp_new, logp_old, adv, mask = two_rows()
    loss, _ = ppo_clip(logp_new, logp_old, adv, mask, LossConfig(aggregation=aggregation), normalizer=normalizer)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_seq_mean_div_m_needs_normalizer():
    with pytest.raises(ValueError, match="normalizer"):
        ppo_clip(*two_rows(), LossConfig(aggregation="seq_mean_div_M"))


def test_asymmetric_clip_eps_high():
    # ρ = 1.25, A = 1: ε_high = 0.2 clips to 1.2 (ℓ = −1.2); ε_high = 0.28 does not (ℓ = −1.25).
    args = (ratios_to_logp([1.25]), torch.zeros(1), torch.ones(1), torch.ones(1, dtype=torch.bool))
    assert ppo_clip(*args, LossConfig(aggregation="token_mean"))[0].item() == pytest.approx(-1.2)
    assert ppo_clip(*args, LossConfig(aggregation="token_mean", eps_high=0.28))[0].item() == pytest.approx(-1.25)


def test_dual_clip():
    # A = −1: ρ = 5 -> max(5·1, 1.2·1) = 5, dual clip c = 3 bounds it to 3 (gradient 0);
    #         ρ = 2 -> 2 < 3, unchanged (gradient −Aρ = 2).
    # A = +1: ρ = 5 -> max(−5, −1.2) = −1.2, dual clip does not apply.
    # token_mean = (3 + 2 − 1.2)/3 = 1.2666667.
    logp_new = ratios_to_logp([5.0, 2.0, 5.0])
    adv = torch.tensor([-1.0, -1.0, 1.0])
    cfg = LossConfig(aggregation="token_mean", dual_clip=3.0)
    loss, metrics = ppo_clip(logp_new, torch.zeros(3), adv, torch.ones(3, dtype=torch.bool), cfg)
    assert loss.item() == pytest.approx(1.2666667, abs=1e-6)
    assert metrics["train/dual_clip_frac"] == pytest.approx(1 / 3)
    loss.backward()
    assert logp_new.grad.tolist() == pytest.approx([0.0, 2.0 / 3, 0.0], abs=1e-6)
    with pytest.raises(ValueError, match="dual_clip"):
        LossConfig(dual_clip=1.0)


def test_k3_kl_to_reference():
    # ρ = 1, A = 0 (no policy-gradient term). log π_ref − log π_θ = ln 2:
    # k3 = 2 − ln 2 − 1 = 0.3068528; β = 0.1 -> loss 0.0306853.
    # ∂/∂logπ_θ of β(e^{r−θ} − (r − θ) − 1) = β(1 − e^{r−θ}) = 0.1·(1 − 2) = −0.1.
    logp_new = torch.zeros(1, requires_grad=True)
    cfg = LossConfig(aggregation="token_mean", kl_coef=0.1)
    loss, metrics = ppo_clip(logp_new, torch.zeros(1), torch.zeros(1), torch.ones(1, dtype=torch.bool), cfg,
                             logp_ref=torch.tensor([math.log(2.0)]))
    assert loss.item() == pytest.approx(0.0306853, abs=1e-6)
    assert metrics["train/kl_ref"] == pytest.approx(0.3068528, abs=1e-6)
    loss.backward()
    assert logp_new.grad.item() == pytest.approx(-0.1, abs=1e-6)
    with pytest.raises(ValueError, match="logp_ref"):
        ppo_clip(logp_new, torch.zeros(1), torch.zeros(1), torch.ones(1, dtype=torch.bool), cfg)


def test_masked_tokens_get_no_loss_and_no_gradient_even_when_not_finite():
    # Tool-response positions hold −inf / NaN log-probs and a NaN advantage: the loss equals the
    # loss of the valid tokens alone and their gradient is exactly 0, with no NaN anywhere.
    logp_new = torch.tensor([[math.log(0.5), -math.inf, math.nan, math.log(1.1)]], requires_grad=True)
    logp_old = torch.tensor([[0.0, 0.0, math.nan, 0.0]])
    adv = torch.tensor([[1.0, math.nan, 5.0, -1.0]])
    mask = torch.tensor([[True, False, False, True]])
    ref = torch.tensor([[0.0, math.nan, -math.inf, 0.0]])
    cfg = LossConfig(aggregation="token_mean", dual_clip=3.0, kl_coef=0.01)
    loss, metrics = ppo_clip(logp_new, logp_old, adv, mask, cfg, logp_ref=ref)
    loss.backward()
    assert torch.isfinite(loss) and all(math.isfinite(v) for v in metrics.values())
    assert torch.isfinite(logp_new.grad).all()
    assert logp_new.grad[0, 1].item() == 0.0 and logp_new.grad[0, 2].item() == 0.0
    # Valid part: (−0.5 + 1.1)/2 = 0.3 plus KL: k3 at log(π_ref/π_θ) = ln 2 and −ln 1.1:
    # (2 − ln 2 − 1) + (1/1.1 + ln 1.1 − 1) = 0.3068528 + 0.0044174; ×0.01/2 -> 0.0015564.
    assert loss.item() == pytest.approx(0.3 + 0.0015564, abs=1e-6)
    assert metrics["train/tokens"] == 2.0


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean", "seq_mean_div_M"])
def test_fully_masked_batch_is_zero_with_zero_gradient(aggregation):
    logp_new = torch.randn(2, 4, requires_grad=True)
    loss, metrics = ppo_clip(logp_new, torch.zeros(2, 4), torch.randn(2, 4), torch.zeros(2, 4, dtype=torch.bool),
                             LossConfig(aggregation=aggregation), normalizer=None if aggregation != "seq_mean_div_M" else 8.0)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logp_new.grad, torch.zeros(2, 4))
    assert metrics["train/clip_frac"] == 0.0 and metrics["train/tokens"] == 0.0


def test_advantages_are_not_differentiated_and_shapes_are_checked():
    adv = torch.ones(1, 2, requires_grad=True)
    loss, _ = ppo_clip(torch.zeros(1, 2, requires_grad=True), torch.zeros(1, 2), adv, torch.ones(1, 2, dtype=torch.bool),
                       LossConfig(aggregation="token_mean"))
    loss.backward()
    assert adv.grad is None
    with pytest.raises(ValueError, match="shape"):
        ppo_clip(torch.zeros(1, 2), torch.zeros(1, 3), torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), LossConfig())
    with pytest.raises(ValueError, match="aggregation"):
        LossConfig(aggregation="sum")
    assert set(LOSSES) == {"ppo_clip"}

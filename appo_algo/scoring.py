"""Per-token scores of APPO_METHOD.md §1-3: entropy, future value Ω, per-rollout z-scores, Branching Score.

Every function is pure torch and works on batches: the last dimension is the token axis,
leading dimensions are rollouts. ``mask`` is a bool tensor of the same shape that is True on
valid (generated, non-tool-response) tokens; padding and tool-response tokens are False.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

# Chunks of the discounted scan are sized so that gamma**chunk >= 2**-_CHUNK_LOG2_RANGE: the
# in-chunk closed form rescales by gamma**-j and must neither underflow nor lose precision.
_CHUNK_LOG2_RANGE = 60.0


def token_entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Full-vocabulary entropy −Σ p log p of softmax(logits/τ) over the last dim (not a top-k truncation)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (got {temperature}); greedy decoding has no entropy to score")
    return entropy_of(torch.log_softmax(logits.float() / temperature, dim=-1))


def entropy_of(logp: Tensor) -> Tensor:
    """−Σ p log p over the last dim, from log-probabilities (the sampler passes the ones it samples from)."""
    p = logp.exp()
    # Vocabulary entries masked to -inf have p = 0 and contribute 0 (not 0 * -inf = NaN).
    return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(dim=-1)


def discounted_suffix_sum(x: Tensor, mask: Tensor | None, gamma: float) -> Tensor:
    """S_i = Σ_{j≥i, mask_j} γ^(j−i) x_j over the last dim, as an O(L) chunked reverse scan.

    Masked positions contribute 0 to every sum but still count in the distance j − i: a
    tool response between two generated tokens discounts the later one by its length, since
    the future it summarises lies that many positions away. S_i is defined at every
    position (also masked ones); callers read it at valid positions only.
    """
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1] (got {gamma})")
    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    if mask is not None:
        if mask.shape != x.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} differs from x shape {tuple(x.shape)}")
        work = torch.where(mask, work, torch.zeros_like(work))
    length = work.shape[-1]
    if length == 0:
        return work.clone()
    if gamma == 1.0:
        return work.flip(-1).cumsum(-1).flip(-1)
    chunk = max(1, min(length, int(_CHUNK_LOG2_RANGE / -math.log2(gamma))))
    n_chunks = -(-length // chunk)
    pad = n_chunks * chunk - length
    padded = torch.nn.functional.pad(work, (0, pad))
    blocks = padded.reshape(*work.shape[:-1], n_chunks, chunk)
    j = torch.arange(chunk, device=work.device, dtype=work.dtype)
    up = gamma ** j  # γ^j, ≥ 2^-60 by the choice of chunk
    # In-chunk suffix sums: γ^-i Σ_{j≥i} γ^j x_j, summed from the end so each partial sum is
    # dominated by its own first term (no cancellation).
    local = (blocks * up).flip(-1).cumsum(-1).flip(-1) / up
    # Carry the suffix sum of later chunks backwards: position i of a chunk sees the next
    # chunk's start at distance chunk − i.
    carry_weight = gamma ** (chunk - j)
    out = torch.empty_like(local)
    carry = torch.zeros_like(local[..., 0, 0])
    for c in range(n_chunks - 1, -1, -1):
        out[..., c, :] = local[..., c, :] + carry_weight * carry.unsqueeze(-1)
        carry = out[..., c, 0]
    return out.reshape(*work.shape[:-1], n_chunks * chunk)[..., :length]


def omega(logp_new: Tensor, logp_old: Tensor, mask: Tensor, gamma: float, clamp: float = 20.0) -> Tensor:
    """Ω_i = exp(clamp(Σ_{j≥i} γ^(j−i) mask_j (log π_θ − log π_old)_j, ±clamp)): the policy-induced likelihood gain."""
    log_ratio = torch.where(mask, logp_new.float() - logp_old.float(), torch.zeros_like(logp_new, dtype=torch.float32))
    return discounted_suffix_sum(log_ratio, mask, gamma).clamp(-clamp, clamp).exp()


def _masked_mean_std(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row mean, population std and count over valid positions (keepdim), all float32."""
    xf = x.float()
    count = mask.sum(-1, keepdim=True).to(xf.dtype)
    safe_count = count.clamp_min(1.0)
    mean = torch.where(mask, xf, torch.zeros_like(xf)).sum(-1, keepdim=True) / safe_count
    centred = torch.where(mask, xf - mean, torch.zeros_like(xf))
    std = (centred.square().sum(-1, keepdim=True) / safe_count).sqrt()
    return mean, std, count


def _is_flat(mean: Tensor, std: Tensor, count: Tensor, eps: float) -> Tensor:
    """A row ranks nothing when it has < 2 valid values or its std is ~0 relative to its scale."""
    return (count < 2) | (std <= eps * (1.0 + mean.abs()))


def zscore(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """Per-row z-score (population std) over valid positions; constant rows and invalid positions give 0."""
    mean, std, count = _masked_mean_std(x, mask)
    flat = _is_flat(mean, std, count, eps)
    z = (x.float() - mean) / torch.where(flat, torch.ones_like(std), std)
    return torch.where(flat | ~mask, torch.zeros_like(z), z)


def branching_score(omega: Tensor, entropy: Tensor, mask: Tensor, clip: tuple[float, float] = (1.0, 1.2)) -> Tensor:
    """BS_i = Z(clip(Ω_i, lo, hi)) · Z(H_i), z-scores per rollout over valid tokens."""
    lo, hi = clip
    return zscore(omega.clamp(lo, hi), mask) * zscore(entropy, mask)


def omega_is_degenerate(omega: Tensor, mask: Tensor, clip: tuple[float, float] | None = None, eps: float = 1e-8) -> Tensor:
    """Bool per row: clip(Ω) is flat over the valid tokens (e.g. π_θ = π_old gives Ω ≡ 1), so Z(Ω) ≡ 0 there.

    Uses the same flatness test as ``zscore``; rows with fewer than two valid tokens count as
    degenerate because there is nothing to rank.
    """
    clipped = omega if clip is None else omega.clamp(*clip)
    mean, std, count = _masked_mean_std(clipped, mask)
    return _is_flat(mean, std, count, eps).squeeze(-1)

"""UME-R1's GRPO loss: hand values of the clip and the k3 KL; value and gradient on a toy policy (random
logits) against an independent float64 re-implementation, padding masked."""

from __future__ import annotations

import math

import pytest
import torch

from omniret.losses.grpo import grpo_loss, k3_kl, ume_r1_loss


def test_k3_hand_value():
    got = k3_kl(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)]))
    assert got.item() == pytest.approx(0.5 + math.log(2) - 1)
    assert k3_kl(torch.tensor([-1.3]), torch.tensor([-1.3])).item() == 0.0


def test_asymmetric_clip_hand_values():
    # Tokens: ratio 1.5 with A=+1 (clipped at 1.28), ratio 0.5 with A=-1 (clipped at 0.8), ratio 1.1 (inside).
    old = torch.zeros(3, 1)
    logp = torch.log(torch.tensor([[1.5], [0.5], [1.1]])).requires_grad_()
    adv = torch.tensor([1.0, -1.0, 1.0])
    out = grpo_loss(logp, old, None, adv, torch.ones(3, 1), max_completion_length=4, beta=0.0)
    assert out.loss.item() == pytest.approx((-1.28 + 0.8 - 1.1) / 4 / 3)
    out.loss.backward()
    # Clipped tokens carry no gradient; the free one has d/dlogp (-ratio * A) / (L * B) = -1.1 / 12.
    assert logp.grad[:, 0].tolist() == pytest.approx([0.0, 0.0, -1.1 / 12])
    assert out.clip_fraction.item() == pytest.approx(2 / 3)


def _reference(logits, old_logits, ref_logits, tokens, mask, adv, max_len, eps_low, eps_high, beta):
    """Loops over sequences and tokens, float64."""
    total = 0.0
    batch, length = tokens.shape
    for b in range(batch):
        seq = 0.0
        for t in range(length):
            if not mask[b, t]:
                continue
            tok = tokens[b, t]
            lp = torch.log_softmax(logits[b, t], dim=-1)[tok]
            old = torch.log_softmax(old_logits[b, t], dim=-1)[tok]
            ref = torch.log_softmax(ref_logits[b, t], dim=-1)[tok]
            ratio = torch.exp(lp - old)
            bounded = min(max(ratio.item(), 1 - eps_low), 1 + eps_high)
            # Take whichever of the two surrogate terms is smaller; the clipped one is a constant.
            term = ratio * adv[b] if ratio.item() * adv[b] <= bounded * adv[b] else bounded * adv[b] + 0 * ratio
            kl = torch.exp(ref - lp) - (ref - lp) - 1
            seq = seq + (-term + beta * kl)
        total = total + seq / max_len
    return total / batch


def test_value_and_gradient_match_float64_reference():
    gen = torch.Generator().manual_seed(0)
    batch, length, vocab, max_len = 4, 6, 11, 8
    base = torch.randn(batch, length, vocab, generator=gen)
    old_logits = base + 0.6 * torch.randn(batch, length, vocab, generator=gen)  # ratios on both sides of the clip
    ref_logits = base + 0.6 * torch.randn(batch, length, vocab, generator=gen)
    tokens = torch.randint(0, vocab, (batch, length), generator=gen)
    mask = torch.ones(batch, length)
    mask[1, 4:] = 0  # padding after EOS
    mask[3, 2:] = 0
    adv = torch.tensor([1.3, -0.7, 0.4, -1.9])

    logits = base.clone().requires_grad_()
    logp = torch.log_softmax(logits, -1).gather(-1, tokens[..., None])[..., 0]
    old = torch.log_softmax(old_logits, -1).gather(-1, tokens[..., None])[..., 0]
    ref = torch.log_softmax(ref_logits, -1).gather(-1, tokens[..., None])[..., 0]
    out = grpo_loss(logp, old, ref, adv, mask, max_completion_length=max_len)
    out.loss.backward()

    logits64 = base.double().clone().requires_grad_()
    expected = _reference(logits64, old_logits.double(), ref_logits.double(), tokens, mask.bool(), adv.double(),
                          max_len, 0.2, 0.28, 0.04)
    expected.backward()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
    assert torch.allclose(logits.grad.double(), logits64.grad, rtol=1e-4, atol=1e-7)
    # Padding positions get no gradient; the clip was active on some tokens (the test exercises both branches).
    assert logits.grad[1, 4:].abs().max().item() == 0.0 and logits.grad[3, 2:].abs().max().item() == 0.0
    assert 0.0 < out.clip_fraction.item() < 1.0
    assert out.kl.item() > 0.0


def test_ume_r1_loss_is_mean_of_sides_and_bad_shapes():
    ones = torch.zeros(2, 3)
    adv = torch.tensor([1.0, -1.0])
    a = grpo_loss(ones - 0.1, ones, ones, adv, torch.ones(2, 3), 3)
    b = grpo_loss(ones + 0.1, ones, ones, -adv, torch.ones(2, 3), 3)
    assert ume_r1_loss(a, b).item() == pytest.approx((a.loss.item() + b.loss.item()) / 2)
    with pytest.raises(ValueError, match="ref_logp is required"):
        grpo_loss(ones, ones, None, adv, torch.ones(2, 3), 3)
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(ones, ones, ones, torch.ones(3), torch.ones(2, 3), 3)
    with pytest.raises(ValueError, match="same"):
        grpo_loss(ones, ones, ones, adv, torch.ones(2, 4), 3)

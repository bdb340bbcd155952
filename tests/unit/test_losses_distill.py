"""The distillation loss against a float64 loop reference (value and gradient), its edge cases and options."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from omniret.losses import DistillLoss, InfoNCE, MatryoshkaLoss, build_loss

F64 = torch.float64


def inputs(b: int = 5, d: int = 8, k: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, d, generator=gen, dtype=F64)
    t = q + 0.7 * torch.randn(b, d, generator=gen, dtype=F64)
    neg = t[:, None, :] + torch.randn(b, k, d, generator=gen, dtype=F64)
    teacher = 3 * torch.randn(b, k + 1, generator=gen, dtype=F64)
    return q, t, neg, teacher


def reference(q, t, neg, teacher, tau, teacher_tau):
    """-sum_i P_rr log P_emb per row, averaged; written with loops and explicit exp/log."""
    total = 0.0
    for i in range(q.shape[0]):
        qi = q[i] / q[i].norm()
        cands = [t[i]] + [neg[i, j] for j in range(neg.shape[1])]
        cos = [torch.dot(qi, c / c.norm()) for c in cands]
        z_s = sum(torch.exp(c / tau) for c in cos)
        z_t = sum(math.exp(float(s) / teacher_tau) for s in teacher[i])
        for c, s in zip(cos, teacher[i], strict=True):
            total = total - (math.exp(float(s) / teacher_tau) / z_t) * torch.log(torch.exp(c / tau) / z_s)
    return total / q.shape[0]


def leaves(*xs):
    return [x.detach().clone().requires_grad_(True) for x in xs]


@pytest.mark.parametrize(("tau", "teacher_tau"), [(0.05, 1.0), (0.2, 0.5)])
def test_distill_value_and_gradient_match_reference(tau, teacher_tau):
    q, t, neg, teacher = inputs()
    a = leaves(q, t, neg)
    b = leaves(q, t, neg)
    out = DistillLoss(tau, teacher_temperature=teacher_tau)(*a, teacher_scores=teacher)
    ref = reference(*b, teacher, tau, teacher_tau)
    assert out.loss.item() == pytest.approx(ref.item(), abs=1e-10)
    out.loss.backward()
    ref.backward()
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x.grad, y.grad, atol=1e-10, rtol=1e-8)


def test_one_hot_teacher_is_cross_entropy_of_the_positive():
    q, t, neg, _ = inputs()
    teacher = torch.full((q.shape[0], neg.shape[1] + 1), -1e4, dtype=F64)
    teacher[:, 0] = 0.0  # softmax is exactly one-hot in float64
    out = DistillLoss(0.1)(q, t, neg, teacher_scores=teacher)
    qn, cands = F.normalize(q, dim=-1), F.normalize(torch.cat([t[:, None], neg], 1), dim=-1)
    logits = torch.einsum("bd,bcd->bc", qn, cands) / 0.1
    expected = F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long))
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-10)


def test_uniform_teacher_and_equal_cosines_give_log_candidates():
    q = torch.tensor([[1.0, 0.0]], dtype=F64)
    t = torch.tensor([[0.0, 1.0]], dtype=F64)
    neg = torch.tensor([[[0.0, -1.0], [0.0, 2.0]]], dtype=F64)  # every cosine 0
    out = DistillLoss(0.02)(q, t, neg, teacher_scores=torch.zeros(1, 3, dtype=F64))
    assert out.loss.item() == pytest.approx(math.log(3), abs=1e-12)


def test_with_base_is_the_weighted_sum_and_registry_builds_it():
    q, t, neg, teacher = inputs()
    loss = build_loss("distill", temperature=0.05, base="infonce", distill_weight=0.5)
    assert isinstance(loss.base, InfoNCE) and loss.supports_positive_mask
    out = loss(q, t, neg, teacher_scores=teacher)
    alone = DistillLoss(0.05)(q, t, neg, teacher_scores=teacher).loss
    base = InfoNCE(0.05)(q, t, neg).loss
    assert out.loss.item() == pytest.approx((base + 0.5 * alone).item(), abs=1e-10)
    assert out.metrics["distill"] == pytest.approx(alone.item(), abs=1e-10)
    assert out.metrics["base_loss"] == pytest.approx(base.item(), abs=1e-10)


def test_matryoshka_forwards_teacher_scores():
    q, t, neg, teacher = inputs(d=8)
    loss = build_loss("distill", temperature=0.05, matryoshka_dims=[4])
    assert isinstance(loss, MatryoshkaLoss) and loss.supports_teacher_scores
    out = loss(q, t, neg, teacher_scores=teacher)
    small = DistillLoss(0.05)(q[:, :4], t[:, :4], neg[..., :4], teacher_scores=teacher).loss
    full = DistillLoss(0.05)(q, t, neg, teacher_scores=teacher).loss
    assert out.loss.item() == pytest.approx((small + full).item(), abs=1e-10)


def test_bad_inputs_are_refused_by_name():
    q, t, neg, teacher = inputs(k=3)
    with pytest.raises(ValueError, match="teacher_scores"):
        DistillLoss()(q, t, neg)
    with pytest.raises(ValueError, match=r"\(B, 1 \+ K\)"):
        DistillLoss()(q, t, neg, teacher_scores=teacher[:, :3])
    with pytest.raises(ValueError, match="hard negatives"):
        DistillLoss()(q, t, None, teacher_scores=teacher[:, :1])
    bad = teacher.clone()
    bad[0, 1] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        DistillLoss()(q, t, neg, teacher_scores=bad)
    with pytest.raises(ValueError, match="does not use teacher_scores"):
        InfoNCE()(q, t, neg, teacher_scores=teacher)
    with pytest.raises(ValueError, match="teacher_temperature"):
        DistillLoss(teacher_temperature=0)
    with pytest.raises(ValueError, match="not distill"):
        DistillLoss(base="distill")

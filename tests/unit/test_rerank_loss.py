"""Reranker losses against float64 re-implementations written from the formulas (value and gradient)."""

from __future__ import annotations

import pytest
import torch

from omniret.losses.rerank import RerankLoss


def _two_way_reference(yes: torch.Tensor, no: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """mean_i -log p(l_i), p = softmax over (logit_yes, logit_no), written out in float64."""
    e_yes, e_no = torch.exp(yes), torch.exp(no)
    p_yes, p_no = e_yes / (e_yes + e_no), e_no / (e_yes + e_no)
    return -(labels * torch.log(p_yes) + (1 - labels) * torch.log(p_no)).mean()


def test_pointwise_loss_equals_the_two_way_softmax_cross_entropy_in_value_and_gradient():
    gen = torch.Generator().manual_seed(0)
    groups, size = 4, 3  # each group: the positive (yes) then two negatives (no)
    yes = torch.randn(groups * size, generator=gen, dtype=torch.float64) * 3
    no = torch.randn(groups * size, generator=gen, dtype=torch.float64) * 3
    labels = torch.tensor(([1.0] + [0.0] * (size - 1)) * groups, dtype=torch.float64)
    yes_ref, no_ref = yes.clone().requires_grad_(), no.clone().requires_grad_()
    ref = _two_way_reference(yes_ref, no_ref, labels)
    ref.backward()
    z = (yes - no).float().requires_grad_()
    out = RerankLoss("pointwise")(z, size)
    out.loss.backward()
    assert float(out.loss) == pytest.approx(float(ref), rel=1e-6)
    # dL/dz equals dL/dlogit_yes (and -dL/dlogit_no): the loss depends on the difference only
    torch.testing.assert_close(z.grad.double(), yes_ref.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(z.grad.double(), -no_ref.grad, rtol=1e-5, atol=1e-7)
    assert out.metrics["p_yes_pos"] == pytest.approx(float(torch.sigmoid(yes - no)[::size].mean()), rel=1e-5)


def test_chunks_sum_to_the_batch_loss_with_a_shared_normalizer():
    z = torch.tensor([2.0, -1.0, 0.5, -0.3, 1.0, 0.0])
    loss = RerankLoss("pointwise")
    whole = loss(z, 3).loss
    parts = loss(z[:3], 3, normalizer=6).loss + loss(z[3:], 3, normalizer=6).loss
    assert float(parts) == pytest.approx(float(whole), rel=1e-6)


def test_listwise_loss_is_the_softmax_over_the_positive_and_its_negatives():
    z64 = torch.tensor([[1.5, 0.2, -0.7], [-0.4, 0.9, 0.1]], dtype=torch.float64, requires_grad=True)
    e = torch.exp(z64)
    ref = -torch.log(e[:, 0] / e.sum(1)).mean()
    ref.backward()
    z = z64.detach().float().reshape(-1).requires_grad_()
    out = RerankLoss("listwise")(z, 3)
    out.loss.backward()
    assert float(out.loss) == pytest.approx(float(ref), rel=1e-6)
    torch.testing.assert_close(z.grad.double().view(2, 3), z64.grad, rtol=1e-5, atol=1e-7)
    assert out.metrics["pos_above_neg"] == pytest.approx(0.5)


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="pointwise"):
        RerankLoss("pairwise")

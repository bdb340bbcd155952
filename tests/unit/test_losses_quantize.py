"""LSQ quantisers (forward and backward against hand values and the paper's piecewise gradient in float64),
the loss on full + quantised embeddings, and the optimiser training the step sizes."""

from __future__ import annotations

import math

import pytest
import torch

from omniret.losses import InfoNCE, LSQQuantizer, MatryoshkaLoss, QuantizedLoss, build_loss, lsq_quantize
from omniret.training.optim import param_groups

F64 = torch.float64


def test_int8_hand_values_forward_and_backward():
    v = torch.tensor([1.5, -1.6, 0.023, -0.017], dtype=F64, requires_grad=True)
    s = torch.tensor(0.01, dtype=F64, requires_grad=True)
    out = lsq_quantize(v, s, "int8")
    # v/s = [150, -160, 2.3, -1.7] -> clipped to [127, -128] -> rounded [127, -128, 2, -2]
    torch.testing.assert_close(out, torch.tensor([1.27, -1.28, 0.02, -0.02], dtype=F64))
    out.sum().backward()
    torch.testing.assert_close(v.grad, torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=F64))  # STE inside the range
    # ds = g * sum(127, -128, 2 - 2.3, -2 + 1.7), g = 1/sqrt(N * Q_P) = 1/sqrt(4 * 127)
    assert s.grad.item() == pytest.approx((127 - 128 - 0.3 - 0.3) / math.sqrt(4 * 127), abs=1e-12)


def test_binary_hand_values_forward_and_backward():
    v = torch.tensor([0.5, -0.2, 3.0], dtype=F64, requires_grad=True)
    s = torch.tensor(1.0, dtype=F64, requires_grad=True)
    out = lsq_quantize(v, s, "binary")
    torch.testing.assert_close(out, torch.tensor([1.0, -1.0, 1.0], dtype=F64))
    out.sum().backward()
    torch.testing.assert_close(v.grad, torch.tensor([1.0, 1.0, 0.0], dtype=F64))
    assert s.grad.item() == pytest.approx(((1 - 0.5) + (-1 + 0.2) + 1) / math.sqrt(3), abs=1e-12)


def reference(v, s, upstream, fmt):
    """The paper's piecewise forward and gradients, written out (no autograd)."""
    q_n, q_p = {"int8": (128, 127), "binary": (1, 1)}[fmt]
    x = v / s
    inside = (x > -q_n) & (x < q_p)
    level = torch.clamp(x, -q_n, q_p)
    level = level.round() if fmt == "int8" else torch.where(level >= 0, 1.0, -1.0).to(F64)
    forward = level * s
    grad_v = upstream * inside
    ds = torch.where(inside, level - x, torch.where(x <= -q_n, torch.tensor(-q_n, dtype=F64),
                                                    torch.tensor(q_p, dtype=F64)))
    grad_s = (upstream * ds).sum() / math.sqrt(v.shape[-1] * q_p)
    return forward, grad_v, grad_s


@pytest.mark.parametrize(("fmt", "step"), [("int8", 0.004), ("binary", 0.05)])
def test_lsq_matches_the_piecewise_reference(fmt, step):
    gen = torch.Generator().manual_seed(0)
    v = (torch.randn(6, 32, generator=gen, dtype=F64) / 4).requires_grad_(True)  # some entries clip
    s = torch.tensor(step, dtype=F64, requires_grad=True)
    upstream = torch.randn(6, 32, generator=gen, dtype=F64)
    out = lsq_quantize(v, s, fmt)
    (out * upstream).sum().backward()
    forward, grad_v, grad_s = reference(v.detach(), step, upstream, fmt)
    torch.testing.assert_close(out.detach(), forward)
    torch.testing.assert_close(v.grad, grad_v)
    assert s.grad.item() == pytest.approx(grad_s.item(), rel=1e-10)
    assert 0 < grad_v.count_nonzero() < grad_v.numel()  # both regimes were exercised


def test_step_is_initialised_from_the_first_batch_as_the_paper_does():
    v = torch.tensor([[0.1, -0.3], [0.2, -0.2]])
    quantizer = LSQQuantizer("int8")
    quantizer(v)
    assert quantizer.step.item() == pytest.approx(2 * 0.2 / math.sqrt(127), rel=1e-6)
    quantizer(10 * v)  # only the first batch initialises
    assert quantizer.step.item() == pytest.approx(2 * 0.2 / math.sqrt(127), rel=1e-6)
    assert LSQQuantizer("binary", init_step=0.5).step.item() == 0.5
    with pytest.raises(ValueError, match="int4"):
        LSQQuantizer("int4")


def test_quantized_loss_adds_the_loss_on_quantised_embeddings():
    gen = torch.Generator().manual_seed(1)
    q, t = torch.randn(4, 16, generator=gen, dtype=F64), torch.randn(4, 16, generator=gen, dtype=F64)
    neg = torch.randn(4, 2, 16, generator=gen, dtype=F64)
    loss = QuantizedLoss(InfoNCE(0.05), ["int8", "binary"], weights=[0.5, 2.0])
    loss.quantizers["int8"] = LSQQuantizer("int8", init_step=0.02)
    loss.quantizers["binary"] = LSQQuantizer("binary", init_step=0.1)
    out = loss(q, t, neg)
    inner = InfoNCE(0.05)
    unit = [torch.nn.functional.normalize(x, dim=-1) for x in (q, t, neg)]
    int8 = [((x / 0.02).clamp(-128, 127).round() * 0.02) for x in unit]
    binary = [torch.where(x >= 0, 1.0, -1.0).to(F64) for x in unit]  # scale is irrelevant after normalising
    expected = inner(q, t, neg).loss + 0.5 * inner(*int8).loss + 2.0 * inner(*binary).loss
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-9)
    out.loss.backward()
    assert loss.quantizers["int8"].step.grad is not None and loss.quantizers["int8"].step.grad != 0


def test_registry_and_optimiser_train_the_steps():
    loss = build_loss("infonce", quantize=["int8"], matryoshka_dims=[8])
    assert isinstance(loss, MatryoshkaLoss) and isinstance(loss.inner, QuantizedLoss)
    assert loss.inner.supports_positive_mask
    model = torch.nn.Linear(4, 4)
    groups = {g["name"]: g for g in param_groups(model, loss, 1e-3, 0.1)}
    assert groups["loss"]["params"] == [loss.inner.quantizers["int8"].step]
    assert groups["loss"]["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="quantize_weights needs quantize"):
        build_loss("infonce", quantize_weights=[1.0])
    with pytest.raises(ValueError, match="distinct formats"):
        build_loss("infonce", quantize=["int8", "int8"])

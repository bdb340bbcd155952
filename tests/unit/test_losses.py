"""Tests of omniret.losses against independently written float64 reference implementations.

The references below use loops and plain formulas (no code shared with the library), so a gradient match
within 1e-6 checks the library's vectorised, log-space, masked implementations.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from netutil import free_port

from omniret.losses import (
    CoSENTLoss,
    DebiasedContrastive,
    E5OmniLoss,
    ExplicitGradientAmplifier,
    FixedTemperature,
    InfoNCE,
    LearnableTemperature,
    LLaVELoss,
    MatryoshkaLoss,
    ModalityTemperature,
    NegativeCurriculum,
    Qwen3VLEmbeddingLoss,
    RzenEmbedLoss,
    TaskTemperature,
    available_losses,
    build_loss,
    coral_loss,
    cosent,
    ega_cross_entropy,
    gather_with_grad,
    temperature_parameters,
)
from omniret.losses.base import dist_info

F64 = torch.float64
ATOL = 1e-6


# ------------------------------------------------------------------------------------------------ helpers


def make_inputs(b: int = 6, d: int = 8, k: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, d, generator=gen, dtype=F64)
    t = q + 0.8 * torch.randn(b, d, generator=gen, dtype=F64)  # positives correlated with their queries
    neg = t[:, None, :] + 1.2 * torch.randn(b, k, d, generator=gen, dtype=F64)
    return q, t, neg


def leaves(*xs: torch.Tensor | None) -> list[torch.Tensor | None]:
    return [None if x is None else x.detach().clone().requires_grad_(True) for x in xs]


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def grads_of(value: torch.Tensor, tensors: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
    live = [x for x in tensors if x is not None]
    out = iter(torch.autograd.grad(value, live, allow_unused=True))
    return [None if x is None else next(out) for x in tensors]


def assert_close(a: torch.Tensor | float, b: torch.Tensor | float, atol: float = ATOL) -> None:
    a, b = torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64)
    torch.testing.assert_close(a, b, rtol=0.0, atol=atol)


def check_against_reference(loss_module, reference, q, t, neg, temp_param_names=(), **forward_kwargs):
    """Loss value and gradients w.r.t. q, t, negatives and temperature parameters match the reference.

    ``reference(q, t, neg, temps)`` gets fresh leaves and a dict of fresh temperature leaves (same values).
    """
    loss_module = loss_module.double()
    ql, tl, nl = leaves(q, t, neg)
    out = loss_module(ql, tl, nl, **forward_kwargs)
    params = dict(loss_module.named_parameters())
    temps_lib = [params[n] for n in temp_param_names]
    got = grads_of(out.loss, [ql, tl, nl, *temps_lib])

    qr, tr, nr = leaves(q, t, neg)
    temps_ref = {n: params[n].detach().clone().requires_grad_(True) for n in temp_param_names}
    ref_loss = reference(qr, tr, nr, temps_ref)
    want = grads_of(ref_loss, [qr, tr, nr, *temps_ref.values()])

    assert_close(out.loss.detach(), ref_loss.detach())
    for g, w in zip(got, want, strict=True):
        if w is None:  # the reference does not depend on it: the library's gradient must be 0 (or absent)
            assert g is None or float(g.abs().max()) == 0.0
            continue
        assert_close(g, w)
    for g in got[3:]:
        assert g is not None and float(g.abs().max()) > 0, "temperature parameters must get a gradient"
    return out


# ------------------------------------------------------------------------------------- reference losses


def ref_infonce(q, t, neg, tau, symmetric=False, pos_mask=None):
    q, t = unit(q), unit(t)
    neg = None if neg is None else unit(neg)
    b = q.shape[0]
    total = 0.0
    for i in range(b):
        logits = [q[i] @ t[j] / tau for j in range(b)]
        if neg is not None:
            logits += [q[i] @ neg[i, k] / tau for k in range(neg.shape[1])]
        logits = torch.stack(logits)
        pos = [j for j in range(b) if j == i or (pos_mask is not None and bool(pos_mask[i, j]))]
        total = total - (torch.logsumexp(logits[pos], 0) - torch.logsumexp(logits, 0))
    loss = total / b
    if not symmetric:
        return loss
    back = 0.0
    for i in range(b):
        logits = torch.stack([t[i] @ q[j] / tau for j in range(b)])
        pos = [j for j in range(b) if j == i or (pos_mask is not None and bool(pos_mask[j, i]))]
        back = back - (torch.logsumexp(logits[pos], 0) - torch.logsumexp(logits, 0))
    return 0.5 * (loss + back / b)


def ref_dcl(q, t, neg, tau, tau_plus):
    q, t, neg = unit(q), unit(t), unit(neg)
    b = q.shape[0]
    total = 0.0
    for i in range(b):
        pos = torch.exp(q[i] @ t[i] / tau)
        negs = [torch.exp(q[i] @ t[j] / tau) for j in range(b) if j != i]
        negs += [torch.exp(q[i] @ neg[i, k] / tau) for k in range(neg.shape[1])]
        n = len(negs)
        ng = (torch.stack(negs).sum() - tau_plus * n * pos) / (1 - tau_plus)
        ng = torch.maximum(ng, n * torch.exp(-1 / torch.as_tensor(tau, dtype=F64)))
        total = total - torch.log(pos / (pos + ng))
    return total / b


def ref_rzen(q, t, neg, taus, alpha, delta, detach_weight=True):
    q, t, neg = unit(q), unit(t), unit(neg)
    b = q.shape[0]
    total = 0.0
    for i in range(b):
        tau = taus[i]
        pos = torch.exp(q[i] @ t[i] / tau)
        denom = pos
        candidates = [(q[i] @ t[j], t[j] @ t[i]) for j in range(b) if j != i]
        candidates += [(q[i] @ neg[i, k], neg[i, k] @ t[i]) for k in range(neg.shape[1])]
        for s, target_sim in candidates:
            if delta is not None and float(target_sim.detach()) > delta:
                continue  # false negative: out of the denominator
            w = torch.exp(alpha * (s.detach() if detach_weight else s))
            denom = denom + w * torch.exp(s / tau)
        total = total - torch.log(pos / denom)
    return total / b


def ref_qwen3(q, t, neg, tau, margin, use_qq, use_dd, dup_mask=None):
    """``dup_mask`` (B, B): duplicates by content; None: by cosine > 1 - 1e-6 (also for explicit negatives)."""
    q, t, neg = unit(q), unit(t), unit(neg)
    b = q.shape[0]
    total = 0.0
    for i in range(b):
        sp = q[i] @ t[i]
        z = torch.exp(sp / tau)

        def term(s, dup, sp=sp):
            if dup or (margin is not None and float(s.detach()) > float(sp.detach()) + margin):
                return 0.0
            return torch.exp(s / tau)

        for k in range(neg.shape[1]):
            z = z + term(q[i] @ neg[i, k], dup_mask is None and float((neg[i, k] @ t[i]).detach()) > 1 - 1e-6)
        for j in range(b):
            if j == i:
                continue
            dup = float((t[j] @ t[i]).detach()) > 1 - 1e-6 if dup_mask is None else bool(dup_mask[i, j])
            if use_qq:
                z = z + term(q[i] @ q[j], dup)
            if use_dd:
                z = z + term(t[i] @ t[j], dup)
            z = z + term(q[i] @ t[j], dup)
        total = total - torch.log(torch.exp(sp / tau) / z)
    return total / b


def ref_modality_tau(tau_vec, presence):
    out = []
    for row in presence:
        present = [m for m in range(len(row)) if bool(row[m])]
        out.append(torch.clamp(sum(tau_vec[m] for m in present) / len(present), min=1e-6))
    return out


def ref_coral_zca(q, p, group, jitter):
    """CORAL with ZCA (eigendecomposition) whitening: a different whitening than the library's Cholesky."""
    x = torch.cat([q, p])
    xc = x - x.mean(0)
    parts = []
    for s in range(0, x.shape[1], group):
        blk = xc[:, s:s + group]
        cov = blk.T @ blk / (x.shape[0] - 1) + jitter * torch.eye(blk.shape[1], dtype=x.dtype)
        evals, evecs = torch.linalg.eigh(cov)
        parts.append(blk @ (evecs @ torch.diag(evals.rsqrt()) @ evecs.T))
    xw = torch.cat(parts, 1)
    qh, ph = xw[: q.shape[0]], xw[q.shape[0]:]

    def cov(a):
        ac = a - a.mean(0)
        return ac.T @ ac / (a.shape[0] - 1)

    d = q.shape[1]
    return ((cov(qh) - cov(ph)) ** 2).sum() / (4 * d * d)


def ref_e5omni(q, t, neg, tau_vec, q_pres, t_pres, k_keep, gamma, eps, lam, group, jitter):
    q, t, neg = unit(q), unit(t), unit(neg)
    b = q.shape[0]
    tq, tp = ref_modality_tau(tau_vec, q_pres), ref_modality_tau(tau_vec, t_pres)
    total = 0.0
    for i in range(b):
        s_pos = (q[i] @ t[i]) / ((tq[i] + tp[i]) / 2)
        cands = [(q[i] @ t[j]) / ((tq[i] + tp[j]) / 2) for j in range(b) if j != i]
        cands += [(q[i] @ neg[i, k]) / ((tq[i] + tp[i]) / 2) for k in range(neg.shape[1])]
        kept = sorted(cands, key=lambda s: float(s.detach()), reverse=True)[:k_keep]
        mass = sum((torch.exp(s) for s in kept), torch.zeros((), dtype=F64))
        n_tilde = torch.clamp(mass - gamma * torch.exp(s_pos), min=eps)
        total = total - torch.log(torch.exp(s_pos) / (torch.exp(s_pos) + n_tilde))
    return total / b + lam * ref_coral_zca(q, t, group, jitter)


def ref_p_bar(s, tau, beta, margin, mode="exp", renormalize=False):
    """P_bar by loops, for a square similarity matrix with the positive on the diagonal."""
    b, c = s.shape
    p = torch.softmax(s / tau, dim=1)
    out = torch.empty_like(p)
    for i in range(b):
        for j in range(c):
            if j == i:
                out[i, j] = p[i, j]
                continue
            h = max(float((s[i, j] - s[i, i]).detach()) + margin, 0.0)
            out[i, j] = p[i, j] * (math.exp(beta * h) if mode == "exp" else 1 + beta * h)
        if renormalize:
            out[i] = out[i] / out[i].sum()
    return out


# ------------------------------------------------------------------------------------------- analytic


def test_infonce_all_equal_embeddings_gives_log_b_and_log_b_plus_k():
    b, k = 5, 3
    x = torch.ones(b, 4, dtype=F64)
    loss = InfoNCE()
    assert_close(loss(x, x).loss, math.log(b), atol=1e-12)
    assert_close(loss(x, x, torch.ones(b, k, 4, dtype=F64)).loss, math.log(b + k), atol=1e-12)
    assert_close(InfoNCE(symmetric=True)(x, x).loss, math.log(b), atol=1e-12)


def test_infonce_separated_embeddings_small_tau_gives_zero():
    x = torch.eye(6, dtype=F64)
    neg = -torch.eye(6, dtype=F64)[:, None, :]
    assert float(InfoNCE(temperature=0.01)(x, x, neg).loss) < 1e-30
    assert float(RzenEmbedLoss(temperature=0.01)(x, x, neg).loss) < 1e-30


def test_llave_all_equal_shift_is_alpha():
    b, alpha = 4, 2.0
    x = torch.ones(b, 3, dtype=F64)
    want = math.log(1 + (b - 1) * math.exp(alpha))  # each negative's logit shifted by alpha * s = alpha
    assert_close(LLaVELoss(alpha=alpha)(x, x).loss, want, atol=1e-12)


# ------------------------------------------------------------------------------- gradients vs reference


def test_infonce_matches_reference_with_learnable_temperature():
    q, t, neg = make_inputs()
    check_against_reference(InfoNCE(0.05, learn_temperature=True),
                            lambda q, t, n, tp: ref_infonce(q, t, n, tp["temperature.theta"].exp()),
                            q, t, neg, ["temperature.theta"])


def test_infonce_symmetric_multi_positive_matches_reference():
    q, t, _ = make_inputs(b=6)
    t[4] = t[1]  # duplicate target: also a positive of query 1 and 4
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[1, 4] = mask[4, 1] = True
    mask[0, 2] = True  # an asymmetric extra positive
    check_against_reference(InfoNCE(0.1, symmetric=True, learn_temperature=True),
                            lambda q, t, n, tp: ref_infonce(q, t, None, tp["temperature.theta"].exp(),
                                                            symmetric=True, pos_mask=mask),
                            q, t, None, ["temperature.theta"], positive_mask=mask)


def test_infonce_one_way_with_negatives_and_positive_mask():
    q, t, neg = make_inputs(b=5, k=3, seed=1)
    mask = torch.zeros(5, 5, dtype=torch.bool)
    mask[3, 0] = True
    check_against_reference(InfoNCE(0.02), lambda q, t, n, tp: ref_infonce(q, t, n, 0.02, pos_mask=mask),
                            q, t, neg, positive_mask=mask)


def ref_label_only(q, t, neg, tau, label_rows):
    """Label-only rows: positive vs their explicit negatives only; other rows: plain InfoNCE."""
    q, t, neg = unit(q), unit(t), unit(neg)
    b = q.shape[0]
    total = 0.0
    for i in range(b):
        logits = [q[i] @ t[i] / tau]
        logits += [q[i] @ t[j] / tau for j in range(b) if j != i and i not in label_rows]
        logits += [q[i] @ neg[i, k] / tau for k in range(neg.shape[1])]
        logits = torch.stack(logits)
        total = total - (logits[0] - torch.logsumexp(logits, 0))
    return total / b


def test_label_only_classification_negatives_match_reference():
    q, t, neg = make_inputs(b=6, k=3, seed=14)
    task_ids = torch.tensor([0, 0, 2, 0, 2, 2])  # 0: image_classification, 2: image_retrieval
    by_task = InfoNCE(0.05, label_only=["image_classification"], learn_temperature=True)
    out = check_against_reference(
        by_task, lambda q, t, n, tp: ref_label_only(q, t, n, tp["temperature.theta"].exp(), {0, 1, 3}),
        q, t, neg, ["temperature.theta"], task_ids=task_ids)
    assert out.metrics["num_negatives"] == pytest.approx((3 * 3 + 3 * (5 + 3)) / 6)
    check_against_reference(InfoNCE(0.05, label_only=True),
                            lambda q, t, n, tp: ref_label_only(q, t, n, 0.05, set(range(6))), q, t, neg)
    # hand value: one row, positive cosine 1, one wrong label at cosine 0, tau 1: log(1 + e^-1)
    e = torch.eye(2, dtype=F64)
    hand = InfoNCE(1.0, label_only=True)(e[:1], e[:1], e[1:2][None], task_ids=0).loss
    assert_close(hand, math.log(1 + math.exp(-1)))
    # a duplicate label elsewhere in the batch changes nothing for a label-only row
    t2 = t.clone()
    t2[1] = t2[0]
    a = InfoNCE(0.05, label_only=True)(q, t2, neg).loss
    assert_close(a, ref_label_only(q, t2, neg, 0.05, set(range(6))))
    with pytest.raises(ValueError, match="unknown task groups"):
        InfoNCE(label_only=["nope"])
    with pytest.raises(ValueError, match="one-way"):
        InfoNCE(symmetric=True, label_only=True)
    with pytest.raises(ValueError, match="task_ids"):
        InfoNCE(label_only=["image_classification"])(q, t, neg)
    assert build_loss("infonce", label_only=["image_classification"]).label_only == frozenset({0})


def ref_cosent(q, d, labels, tau):
    """float64 loops: log(1 + sum over gold-ordered pairs (i above m) of exp((s_m - s_i) / tau))."""
    s = [unit(q[i]) @ unit(d[i]) for i in range(q.shape[0])]
    total = torch.ones((), dtype=F64)
    for i in range(len(s)):
        for m in range(len(s)):
            if labels[i] > labels[m]:
                total = total + torch.exp((s[m] - s[i]) / tau)
    return torch.log(total)


def test_cosent_value_and_gradient_match_reference():
    q, d, _ = make_inputs(b=7, seed=15)
    labels = torch.tensor([5.0, 3.2, 3.2, 0.0, 1.5, 4.0, 3.2], dtype=F64)  # ties contribute nothing
    for tau in (0.05, 1.0):
        ql, dl = leaves(q, d)
        out = CoSENTLoss(tau)(ql, dl, labels)
        qr, dr = leaves(q, d)
        want = ref_cosent(qr, dr, labels, tau)
        assert_close(out.loss, want)
        for g, w in zip(grads_of(out.loss, [ql, dl]), grads_of(want, [qr, dr]), strict=True):
            assert_close(g, w)
        assert out.metrics["ordered_pairs"] == 21 - 3  # 7*6/2 unordered pairs, minus the 3 tied ones
    # hand value: gold ranks pair 0 above pair 1, but it scores 0.2 against 0.5; tau 1: log(1 + e^0.3)
    assert_close(cosent(torch.tensor([0.2, 0.5], dtype=F64), torch.tensor([1.0, 0.0], dtype=F64), 1.0),
                 math.log(1 + math.exp(0.3)))
    assert_close(cosent(torch.tensor([0.2, 0.5], dtype=F64), torch.tensor([1.0, 1.0], dtype=F64), 1.0), 0.0)
    with pytest.raises(ValueError, match="labels"):
        CoSENTLoss()(q, d, labels[:3])
    with pytest.raises(ValueError, match="temperature"):
        CoSENTLoss(0.0)


def test_dcl_matches_reference_including_clamp():
    q, t, neg = make_inputs(seed=2)
    check_against_reference(DebiasedContrastive(0.1, tau_plus=0.1, learn_temperature=True),
                            lambda q, t, n, tp: ref_dcl(q, t, n, tp["temperature.theta"].exp(), 0.1),
                            q, t, neg, ["temperature.theta"])
    # Well-separated rows with a large tau_plus drive Ng below its floor N*exp(-1/t): the clamp is active.
    x = torch.eye(4, 8, dtype=F64) + 0.01
    neg = -x[:, None, :].clone()
    out = check_against_reference(DebiasedContrastive(0.5, tau_plus=0.9),
                                  lambda q, t, n, tp: ref_dcl(q, t, n, 0.5, 0.9), x, x + 0.05, neg)
    assert out.metrics["clamped_frac"] == 1.0


def test_rzen_matches_reference_with_task_temperature_and_masking():
    q, t, neg = make_inputs(b=6, k=2, seed=3)
    t[3] = t[0] + 1e-3  # in-batch false negative pair (s > 0.95)
    neg[2, 1] = t[2]  # explicit negative identical to the positive
    task_ids = torch.tensor([0, 2, 2, 5, 0, 6])
    loss = RzenEmbedLoss(0.05, alpha=3.0, fn_threshold=0.95, task_temperature=True, num_tasks=7)

    def reference(q, t, n, tp):
        taus = tp["temperature.theta"].exp()[task_ids]
        return ref_rzen(q, t, n, taus, 3.0, 0.95)

    out = check_against_reference(loss, reference, q, t, neg, ["temperature.theta"], task_ids=task_ids)
    assert out.metrics["fn_masked_per_row"] == pytest.approx(3 / 6)
    theta_grad = grads_of(loss(*leaves(q, t, neg), task_ids=task_ids).loss, [loss.temperature.theta])[0]
    unused = [1, 3, 4]
    assert float(theta_grad[unused].abs().max()) == 0.0 and float(theta_grad[[0, 2, 5, 6]].abs().min()) > 0


def test_rzen_hardness_weight_is_detached():
    q, t, neg = make_inputs(seed=4)
    loss = RzenEmbedLoss(0.05, alpha=9.0, fn_threshold=None)
    check_against_reference(loss, lambda q, t, n, tp: ref_rzen(q, t, n, [0.05] * 6, 9.0, None), q, t, neg)
    # The non-detached weight gives a different gradient: the stop-gradient matters and is applied.
    ql, tl, nl = leaves(q, t, neg)
    got = grads_of(loss(ql, tl, nl).loss, [ql])[0]
    qr, tr, nr = leaves(q, t, neg)
    undetached = grads_of(ref_rzen(qr, tr, nr, [0.05] * 6, 9.0, None, detach_weight=False), [qr])[0]
    assert float((got - undetached).abs().max()) > 1e-3


def test_llave_matches_explicit_weights():
    q, t, neg = make_inputs(seed=5)
    check_against_reference(LLaVELoss(0.02, alpha=9.0),
                            lambda q, t, n, tp: ref_rzen(q, t, n, [0.02] * 6, 9.0, None), q, t, neg)


def test_rzen_masking_removes_the_masked_columns():
    q, t, _ = make_inputs(b=5, seed=6)
    neg = t[:, None, :].clone()  # every explicit negative equals the row's positive: all masked
    assert_close(RzenEmbedLoss(alpha=0.0)(q, t, neg).loss, InfoNCE()(q, t).loss, atol=1e-10)
    # In-batch duplicate: t[1] == t[0] -> rows 0 and 1 drop each other's column.
    t[1] = t[0]
    qn, tn = unit(q), unit(t)
    logits = qn @ tn.T / 0.02
    rows = []
    for i in range(5):
        cols = [j for j in range(5) if not (i in (0, 1) and j in (0, 1) and j != i)]
        rows.append(torch.logsumexp(logits[i, cols], 0) - logits[i, i])
    assert_close(RzenEmbedLoss(alpha=0.0)(q, t).loss, torch.stack(rows).mean(), atol=1e-10)


def test_rows_left_without_negatives_are_counted():
    """A mask that removes every negative of a row makes its loss exactly 0 with no gradient: counted."""
    q, t, neg = make_inputs(b=5, k=1, seed=12)
    # every target and explicit negative within cosine 0.95 of every other: RzenEmbed's rule masks them all
    t = t[:1].expand(5, -1) + 1e-3 * t
    neg = t[:, None, :].clone()
    ql, tl, nl = leaves(q, t, neg)
    out = RzenEmbedLoss(0.02, fn_threshold=0.95)(ql, tl, nl)
    assert float(out.loss) == 0.0 and out.metrics["rows_without_negatives"] == 5
    assert out.metrics["num_negatives"] == 0
    assert all(float(g.abs().max()) == 0.0 for g in grads_of(out.loss, [ql, tl]))
    # one row only: its own term vanishes, the other rows train
    q, t, neg = make_inputs(b=5, k=1, seed=13)
    keep_rows = RzenEmbedLoss(0.02, fn_threshold=0.95)(q, t, neg)
    assert keep_rows.metrics["rows_without_negatives"] == 0
    mask = torch.zeros(5, 5, dtype=torch.bool)
    mask[2] = True  # row 2: every in-batch target is a positive and no explicit negative is given
    out = InfoNCE(0.02)(q, t, positive_mask=mask)
    assert out.metrics["rows_without_negatives"] == 1
    assert_close(out.loss, ref_infonce(q, t, None, 0.02, pos_mask=mask))
    # Qwen3-VL: every document a duplicate of every other (one label for the whole batch): nothing left
    same = Qwen3VLEmbeddingLoss(0.02)(q, t, positive_mask=torch.ones(5, 5, dtype=torch.bool))
    assert same.metrics["rows_without_negatives"] == 5 and float(same.loss) == 0.0
    assert Qwen3VLEmbeddingLoss(0.02)(q, t, positive_mask=mask).metrics["rows_without_negatives"] == 1
    # Matryoshka slices report it per slice; the loop reads the widest
    wrapped = build_loss("rzen", matryoshka_dims=[4])(q, t[:1].expand(5, -1) + 1e-3 * t)
    assert wrapped.metrics["dim8/rows_without_negatives"] == 5 and wrapped.metrics["dim4/rows_without_negatives"] == 5


def test_qwen3vl_matches_reference_stage1_and_stage2():
    q, t, neg = make_inputs(b=6, k=2, seed=7)
    t[5] = t[2]  # duplicate documents
    neg[1, 0] = t[1]  # explicit negative duplicating the positive
    q[4] = t[0] * 3  # q_4 very close to d_0: masked by the margin rule in several rows
    for use_qq, use_dd, margin in [(True, True, 0.1), (False, False, 0.1), (True, False, None)]:
        check_against_reference(
            Qwen3VLEmbeddingLoss(0.05, margin=margin, use_qq=use_qq, use_dd=use_dd, learn_temperature=True),
            lambda q, t, n, tp, a=use_qq, b=use_dd, m=margin: ref_qwen3(q, t, n, tp["temperature.theta"].exp(),
                                                                        m, a, b),
            q, t, neg, ["temperature.theta"])


def test_qwen3vl_duplicates_by_content_keys_survive_bf16_noise():
    """The same document embedded twice under bf16 / other padding: its cosine falls below 1 - 1e-6, so the
    embedding test misses it; the content-key mask (as the training loop builds it) still masks it."""
    q, t, neg = make_inputs(b=6, k=2, seed=11)
    gen = torch.Generator().manual_seed(0)
    t[4] = t[1].to(torch.bfloat16).double() + 1e-2 * t[1].norm() / math.sqrt(8) * torch.randn(8, generator=gen,
                                                                                               dtype=F64)
    cos = float(unit(t[4]) @ unit(t[1]))
    assert 0.999 < cos < 1 - 1e-6  # a duplicate the cosine rule cannot see
    keys = ["a", "b", "c", "d", "b", "e"]
    mask = torch.tensor([[x == y for y in keys] for x in keys])
    for use_qq, use_dd in [(True, True), (False, False)]:
        loss = Qwen3VLEmbeddingLoss(0.05, margin=0.1, use_qq=use_qq, use_dd=use_dd)
        check_against_reference(
            loss, lambda q, t, n, tp, a=use_qq, b=use_dd: ref_qwen3(q, t, n, 0.05, 0.1, a, b, dup_mask=mask),
            q, t, neg, positive_mask=mask)
        by_cosine = loss(q, t, neg).loss
        assert_close(by_cosine, ref_qwen3(q, t, neg, 0.05, 0.1, use_qq, use_dd))
        assert abs(float(by_cosine) - float(loss(q, t, neg, positive_mask=mask).loss)) > 1e-3
    # local rows of the global mask are accepted too; a wrong shape is refused
    rows = Qwen3VLEmbeddingLoss(0.05)(q, t, neg, positive_mask=mask[:6]).loss
    assert_close(rows, Qwen3VLEmbeddingLoss(0.05)(q, t, neg, positive_mask=mask).loss)
    with pytest.raises(ValueError, match="positive_mask"):
        Qwen3VLEmbeddingLoss(0.05)(q, t, neg, positive_mask=mask[:, :5])


def test_qwen3vl_stage2_without_masking_is_infonce():
    q, t, neg = make_inputs(seed=8)
    a = Qwen3VLEmbeddingLoss(margin=None, use_qq=False, use_dd=False)(q, t, neg).loss
    assert_close(a, InfoNCE()(q, t, neg).loss, atol=1e-10)


def test_e5omni_matches_reference_with_modality_temperature_curriculum_and_coral():
    b, k, d = 6, 2, 8
    q, t, neg = make_inputs(b=b, d=d, k=k, seed=9)
    q_pres = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 1]])
    t_pres = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 1], [0, 1, 1, 1]])
    loss = E5OmniLoss(0.05, gamma_plus=0.1, lambda_coral=0.5, t0=10, total_steps=30, whiten_group_size=4)
    with torch.no_grad():  # distinct per-modality temperatures so the mixing is exercised
        loss.temperature.tau.copy_(torch.tensor([0.04, 0.05, 0.06, 0.07]))
    step = 20  # rho = 0.1 + 0.4 * 0.5 = 0.3 -> k = floor(0.7 * (6 + 2 - 1)) = 4
    k_keep = math.floor(0.7 * (b + k - 1))
    out = check_against_reference(
        loss,
        lambda q, t, n, tp: ref_e5omni(q, t, n, tp["temperature.tau"], q_pres, t_pres, k_keep, 0.1, 1e-8,
                                       0.5, 4, 1e-4),
        q, t, neg, ["temperature.tau"], q_modality=q_pres, t_modality=t_pres, step=step)
    assert out.metrics["rho"] == pytest.approx(0.3)
    assert out.metrics["num_negatives"] == k_keep
    assert out.metrics["coral"] > 0


def test_e5omni_eps_floor_branch_matches_reference():
    # gamma_plus close to 1 and one kept negative far below the positive: the eps floor is active.
    q = torch.eye(3, 6, dtype=F64)
    neg = (-q)[:, None, :]
    loss = E5OmniLoss(0.5, gamma_plus=0.9, eps=1e-3, lambda_coral=0.0, rho_init=0.9, rho_final=0.9)
    pres = torch.zeros(3, 4)
    pres[:, 0] = 1
    check_against_reference(
        loss,
        lambda q, t, n, tp: ref_e5omni(q, t, n, tp["temperature.tau"], pres, pres, 0, 0.9, 1e-3, 0.0, 4, 1e-4),
        q, q + 0.1, neg, ["temperature.tau"], q_modality=pres, t_modality=pres)


def test_ega_value_is_infonce_and_logit_gradient_is_p_bar_minus_i():
    gen = torch.Generator().manual_seed(10)
    s = (unit(torch.randn(5, 4, generator=gen, dtype=F64)) @ unit(torch.randn(5, 4, generator=gen, dtype=F64)).T)
    s.requires_grad_(True)  # independent q and t: several negatives beat S_ii - margin and get amplified
    tau, beta, margin, b = 0.05, 3.0, 0.2, 5
    eye = torch.eye(b, dtype=torch.bool)
    for mode, renorm in [("exp", False), ("linear", False), ("exp", True)]:
        value = ega_cross_entropy(s, tau, eye, beta=beta, margin=margin, mode=mode, renormalize=renorm)
        (grad,) = torch.autograd.grad(value, s)
        want = (ref_p_bar(s.detach(), tau, beta, margin, mode, renorm) - torch.eye(b, dtype=F64)) / (b * tau)
        assert_close(grad, want)
        assert_close(value, torch.nn.functional.cross_entropy(s / tau, torch.arange(b)))
    assert float((ref_p_bar(s.detach(), tau, beta, margin) - torch.softmax(s.detach() / tau, 1)).max()) > 0


def test_ega_module_matches_straight_through_surrogate_and_beta_zero_is_infonce():
    q, t, neg = make_inputs(seed=11)
    beta, margin = 4.0, 0.3

    def surrogate(q, t, n, tp):
        tau = tp["temperature.theta"].exp()
        qn, tn, nn_ = unit(q), unit(t), unit(n)
        s = torch.cat([qn @ tn.T, torch.einsum("bd,bkd->bk", qn, nn_)], 1)
        b, c = s.shape
        p = torch.softmax(s.detach() / tau.detach(), 1)
        p_bar = p.clone()
        for i in range(b):
            for j in range(c):
                if j != i:
                    p_bar[i, j] = p[i, j] * math.exp(beta * max(float((s[i, j] - s[i, i]).detach()) + margin, 0.0))
        target = torch.zeros(b, c, dtype=F64)
        target[range(b), range(b)] = 1
        value = torch.nn.functional.cross_entropy(s.detach() / tau.detach(), torch.arange(b))
        sur = ((p_bar - target) * s).sum() / (b * tau)
        return sur - sur.detach() + value  # straight-through: value of CE, gradient of the surrogate

    ega = ExplicitGradientAmplifier(0.05, beta=beta, margin=margin, learn_temperature=True)
    check_against_reference(ega, surrogate, q, t, neg, ["temperature.theta"])
    ega0, plain = ExplicitGradientAmplifier(0.05, beta=0.0), InfoNCE(0.05)
    a, b_ = leaves(q, t, neg), leaves(q, t, neg)
    got = grads_of(ega0(*a).loss, a)
    want = grads_of(plain(*b_).loss, b_)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, atol=1e-12)
    same_tau = InfoNCE(float(ega.temperature.theta.detach().exp()))
    assert_close(ega(q, t, neg).loss, same_tau(q, t, neg).loss, atol=1e-12)


def test_matryoshka_is_weighted_sum_of_renormalised_slices():
    q, t, neg = make_inputs(d=8, seed=12)
    inner = RzenEmbedLoss(0.05, alpha=2.0, learn_temperature=True).double()
    mrl = MatryoshkaLoss(inner, dims=(2, 4), weights=(0.5, 2.0))

    def reference(q, t, n, tp):
        total = 0.0
        for d, w in [(2, 0.5), (4, 2.0), (8, 1.0)]:
            taus = [tp["inner.temperature.theta"].exp()] * 6
            total = total + w * ref_rzen(unit(q[:, :d]), unit(t[:, :d]), unit(n[..., :d]), taus, 2.0, 0.95)
        return total

    out = check_against_reference(mrl, reference, q, t, neg, ["inner.temperature.theta"])
    assert {"dim2/loss", "dim4/loss", "dim8/loss"} <= set(out.metrics)
    with pytest.raises(ValueError, match="exceed"):
        MatryoshkaLoss(InfoNCE(), dims=(4, 16))(q, t)


# ------------------------------------------------------------------------ temperature and curriculum


def test_temperature_modules_and_parameter_helper():
    assert temperature_parameters(InfoNCE()) == []
    learn = InfoNCE(learn_temperature=True)
    assert temperature_parameters(learn) == [learn.temperature.theta]
    assert float(LearnableTemperature(0.02)().detach().squeeze()) == pytest.approx(0.02)
    assert FixedTemperature(0.07)(None, 3).tolist() == pytest.approx([0.07] * 3)
    task = TaskTemperature(3, init=0.05)
    with torch.no_grad():
        task.theta.copy_(torch.log(torch.tensor([0.01, 0.02, 0.03])))
    assert task(torch.tensor([2, 0, 2]), 3).tolist() == pytest.approx([0.03, 0.01, 0.03])
    assert task(1, 4).tolist() == pytest.approx([0.02] * 4)
    e5 = E5OmniLoss(total_steps=10_000)
    assert temperature_parameters(e5) == [e5.temperature.tau]
    assert temperature_parameters(MatryoshkaLoss(RzenEmbedLoss(task_temperature=True), dims=(2,)))


def test_modality_temperature_mixes_present_modalities_and_clamps():
    mt = ModalityTemperature(init=0.02)
    with torch.no_grad():
        mt.tau.copy_(torch.tensor([0.01, 0.03, -0.5, 0.05]))
    pres = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=torch.bool)
    assert mt(pres, 3).tolist() == pytest.approx([0.02, 0.05, 1e-6])
    assert mt(torch.tensor([1, 3]), 2).tolist() == pytest.approx([0.03, 0.05])
    assert mt(None, 1).tolist() == pytest.approx([1e-6])  # uniform mixture (0.01+0.03-0.5+0.05)/4 < 0: clamped
    with pytest.raises(ValueError, match="at least one"):
        mt(torch.zeros(2, 4), 2)


def test_curriculum_schedule_and_exact_k_per_row():
    cur = NegativeCurriculum(rho_init=0.1, rho_final=0.5, t0=4000, total_steps=14_000)
    for step, rho in [(0, 0.1), (4000, 0.1), (9000, 0.3), (14_000, 0.5), (50_000, 0.5)]:
        assert cur.rho(step) == pytest.approx(rho)
    assert NegativeCurriculum().rho(None) == 0.1
    b, k = 6, 4
    positives = torch.zeros(b, b + k, dtype=torch.bool)
    positives[range(b), range(b)] = True
    for step in (0, 9000, 14_000):
        kept = math.floor((1 - cur.rho(step)) * (b + k - 1))
        for logits in (torch.randn(b, b + k), torch.zeros(b, b + k)):  # distinct values and all ties
            mask = cur.keep_mask(logits, positives, step)
            assert mask.sum(1).tolist() == [kept] * b
            assert not bool((mask & positives).any())
        # the kept ones are the hardest
        logits = torch.randn(b, b + k, dtype=F64)
        mask = cur.keep_mask(logits, positives, step)
        neg_logits = logits.masked_fill(positives, float("-inf"))
        assert torch.equal(mask, neg_logits >= neg_logits.topk(kept, 1).values[:, -1:])
    assert [cur.num_kept(9, s) for s in (0, 9000, 14_000)] == [8, 6, 4]


def test_coral_zero_for_identical_distributions_positive_otherwise():
    gen = torch.Generator().manual_seed(0)
    x = unit(torch.randn(16, 8, generator=gen))
    assert float(coral_loss(x, x, group_size=4)) == 0.0
    y = unit(torch.randn(16, 8, generator=gen) * torch.linspace(0.1, 3, 8))
    assert float(coral_loss(x, y, group_size=4)) > 0
    assert float(coral_loss(x.double(), y.double(), 3)) == pytest.approx(
        float(ref_coral_zca(x.double(), y.double(), 3, 1e-4)), rel=1e-9)


# ------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(("factory", "match"), [
    (lambda: InfoNCE(temperature=0.0), "temperature"),
    (lambda: InfoNCE(temperature=-0.1), "temperature"),
    (lambda: LearnableTemperature(float("nan")), "temperature"),
    (lambda: DebiasedContrastive(tau_plus=1.0), "tau_plus"),
    (lambda: RzenEmbedLoss(alpha=-1.0), "alpha"),
    (lambda: RzenEmbedLoss(fn_threshold=1.5), "fn_threshold"),
    (lambda: TaskTemperature(num_tasks=0), "num_tasks"),
    (lambda: Qwen3VLEmbeddingLoss(margin=-0.1), "margin"),
    (lambda: E5OmniLoss(gamma_plus=1.0), "gamma_plus"),
    (lambda: E5OmniLoss(eps=0.0), "eps"),
    (lambda: E5OmniLoss(lambda_coral=-1.0), "lambda_coral"),
    (lambda: E5OmniLoss(whiten_group_size=0), "whiten_group_size"),
    (lambda: NegativeCurriculum(rho_final=1.5), "rho_final"),
    (lambda: NegativeCurriculum(t0=100, total_steps=50), "total_steps"),
    (lambda: ExplicitGradientAmplifier(mode="cubic"), "mode"),
    (lambda: ExplicitGradientAmplifier(beta=-1.0), "beta"),
    (lambda: MatryoshkaLoss(InfoNCE(), dims=(0, 8)), "dims"),
    (lambda: MatryoshkaLoss(InfoNCE(), dims=(4, 8), weights=(1.0,)), "weights"),
    (lambda: build_loss("triplet"), "infonce"),
    (lambda: build_loss("infonce", alpha=9.0), "accepts"),
])
def test_hyperparameter_validation(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_forward_input_validation():
    q, t, neg = make_inputs()
    with pytest.raises(ValueError, match="shape"):
        InfoNCE()(q, t[:, :4])
    with pytest.raises(ValueError, match="negatives"):
        InfoNCE()(q, t, neg[:, :, :4])
    with pytest.raises(ValueError, match="positive_mask"):
        RzenEmbedLoss()(q, t, positive_mask=torch.eye(6, dtype=torch.bool))
    with pytest.raises(ValueError, match="task_ids"):
        RzenEmbedLoss(task_temperature=True)(q, t)
    with pytest.raises(ValueError, match="task_ids"):
        RzenEmbedLoss(task_temperature=True, num_tasks=3)(q, t, task_ids=3)
    with pytest.raises(ValueError, match="total_steps"):
        E5OmniLoss()(q, t, step=10)


def test_registry_builds_every_loss_and_wraps_matryoshka():
    assert available_losses() == sorted(["infonce", "dcl", "rzen", "llave", "qwen3vl", "e5omni", "qqmm_ega",
                                         "distill"])
    q, t, neg = make_inputs()
    for name in available_losses():
        loss = build_loss(name)
        extra = {"teacher_scores": torch.zeros(q.shape[0], neg.shape[1] + 1, dtype=F64)} if name == "distill" else {}
        out = loss(q, t, neg, **extra)
        assert out.loss.dim() == 0 and math.isfinite(float(out.loss.detach()))
        assert all(isinstance(v, float) for v in out.metrics.values())
    rz = build_loss("rzen")
    assert (rz.alpha, rz.fn_threshold, float(rz.temperature.value)) == (9.0, 0.95, 0.02)
    wrapped = build_loss("infonce", matryoshka_dims=(4,), temperature=0.05)
    assert isinstance(wrapped, MatryoshkaLoss) and wrapped.slices(8) == [(4, 1.0), (8, 1.0)]


# ------------------------------------------------------------------------------------------ distributed


def test_world_size_one_gather_is_identity():
    assert dist_info() == (0, 1)
    x = torch.randn(3, 2)
    assert gather_with_grad(x) is x


B_GLOBAL, D_DIST, K_DIST = 7, 8, 2
SHARDS = [(0, 3), (3, 7)]  # deliberately uneven: 3 rows on rank 0, 4 on rank 1


def _dist_cases():
    """(name, constructor, forward kwargs built from global side tensors) for every loss."""
    mask = torch.zeros(B_GLOBAL, B_GLOBAL, dtype=torch.bool)
    mask[1, 4] = mask[4, 1] = True
    task_ids = torch.tensor([0, 1, 2, 0, 3, 3, 1])
    q_pres = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 1],
                           [0, 0, 1, 0]])
    t_pres = q_pres.flip(0)
    return [
        ("infonce_sym", lambda: InfoNCE(0.05, symmetric=True, learn_temperature=True),
         {"positive_mask": mask}),
        ("dcl", lambda: DebiasedContrastive(0.1, learn_temperature=True), {}),
        ("rzen", lambda: RzenEmbedLoss(0.05, task_temperature=True, num_tasks=4), {"task_ids": task_ids}),
        ("llave", lambda: LLaVELoss(0.05, learn_temperature=True), {}),
        ("qwen3vl", lambda: Qwen3VLEmbeddingLoss(0.05, learn_temperature=True), {}),
        ("e5omni", lambda: E5OmniLoss(0.05, lambda_coral=0.5, t0=0, total_steps=10, whiten_group_size=4),
         {"q_modality": q_pres, "t_modality": t_pres, "step": 5}),
        ("qqmm_ega", lambda: ExplicitGradientAmplifier(0.05, beta=3.0, learn_temperature=True), {}),
        ("mrl_rzen", lambda: MatryoshkaLoss(RzenEmbedLoss(0.05, learn_temperature=True), dims=(4,)), {}),
        ("label_only", lambda: InfoNCE(0.05, label_only=["image_classification"], learn_temperature=True),
         {"task_ids": task_ids}),
        ("cosent", _CoSENTOnPairs, {"labels": torch.tensor([3.0, 1.0, 2.0, 2.0, 0.0, 5.0, 1.0], dtype=F64)}),
    ]


class _CoSENTOnPairs(torch.nn.Module):
    """CoSENT in the (q, t, negatives, **kwargs) shape of the distributed harness (negatives unused)."""

    def __init__(self):
        super().__init__()
        self.inner = CoSENTLoss(0.05)

    def forward(self, q, t, negatives=None, *, labels):
        return self.inner(q, t, labels)


def _dist_inputs():
    q, t, neg = make_inputs(b=B_GLOBAL, d=D_DIST, k=K_DIST, seed=42)
    t[5] = t[1]  # a duplicate target across ranks: FN / duplicate masks must see the global batch
    q[6] = 2 * t[0]
    return q, t, neg


def _local_kwargs(kwargs: dict, lo: int, hi: int) -> dict:
    out = {}
    for key, value in kwargs.items():
        if key in ("task_ids", "q_modality", "t_modality", "labels"):
            value = value[lo:hi]
        out[key] = value  # positive_mask stays global (B_g, B_g); step is a scalar
    return out


def _run_case(make, kwargs, q, t, neg):
    """Loss value, grads w.r.t. (q, t, neg) and temperature grads (by parameter name)."""
    torch.manual_seed(0)
    loss = make().double()
    ql, tl, nl = leaves(q, t, neg)
    out = loss(ql, tl, nl, **kwargs)
    out.loss.backward()
    temps = {n: p.grad.clone() for n, p in loss.named_parameters() if p.grad is not None}
    return float(out.loss.detach()), [ql.grad, tl.grad, nl.grad], temps


def _dist_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        q, t, neg = _dist_inputs()
        lo, hi = SHARDS[rank]
        results = {name: _run_case(make, _local_kwargs(kw, lo, hi), q[lo:hi], t[lo:hi], neg[lo:hi])
                   for name, make, kw in _dist_cases()}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_gather_matches_full_batch(tmp_path):
    world = len(SHARDS)
    mp.spawn(_dist_worker, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    q, t, neg = _dist_inputs()
    for name, make, kwargs in _dist_cases():
        full_loss, full_grads, full_temps = _run_case(make, kwargs, q, t, neg)
        # Convention: sum_r loss_r = W * L_full and each rank's local gradient = W * dL_full/dx_local.
        assert sum(r[name][0] for r in ranks) / world == pytest.approx(full_loss, abs=1e-10), name
        for r, (lo, hi) in enumerate(SHARDS):
            for got, want in zip(ranks[r][name][1], full_grads, strict=True):
                if want is None:  # an input the loss does not use (CoSENT's negatives)
                    assert got is None, name
                    continue
                assert_close(got / world, want[lo:hi], atol=1e-10)
        assert set(full_temps) == set(ranks[0][name][2]), name
        for pname, want in full_temps.items():
            assert float(want.abs().max()) > 0, (name, pname)
            assert_close(sum(r[name][2][pname] for r in ranks) / world, want, atol=1e-10)

"""CoSENT: a ranking loss for graded-similarity (STS-style) pairs, as Qwen3-VL-Embedding uses it (METHODS §8.2).

Unlike the contrastive losses, CoSENT sees pairs with a graded gold score, not positives and negatives,
so it is its own module with ``forward(q, d, labels)`` rather than a :class:`ContrastiveLoss`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from omniret.losses.base import LossOutput, all_gather_no_grad, dist_info, gather_with_grad, normalize


def cosent(scores: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """``log(1 + sum_{(a, b): y_a > y_b} exp((s_b - s_a) / tau))`` over the pairs' cosines ``scores`` (N,).

    Every ordered pair whose gold scores disagree contributes; equal gold scores contribute nothing, so a
    batch without any ordered pair gives 0. Computed as a logsumexp over ``[0, (s_b - s_a)/tau ...]``.
    """
    if scores.dim() != 1 or labels.shape != scores.shape:
        raise ValueError(f"scores and labels must both have shape (N,); got {tuple(scores.shape)} and "
                         f"{tuple(labels.shape)}")
    diff = (scores[None, :] - scores[:, None]) / temperature  # [a, b] = (s_b - s_a) / tau
    ordered = labels[:, None] > labels[None, :]  # y_a > y_b
    terms = torch.cat([diff.new_zeros(1), diff[ordered]])
    return torch.logsumexp(terms, dim=0)


class CoSENTLoss(nn.Module):
    """CoSENT on the cosines of (query, document) pairs with graded gold scores (Qwen3-VL-Embedding §3.3).

    ``L = log(1 + sum_{y(i) > y(m)} exp((cos(q_m, d_m) - cos(q_i, d_i)) / tau))`` over the pairs of the
    global batch (every rank's pairs are gathered; each rank computes the same value, a batch-global term in
    the convention of :mod:`omniret.losses.base`, so DDP's averaging gives the full-batch gradient).

    tau: the report does not state it; 0.05 (scale 20) is the value of the original CoSENT write-up
    (Su Jianlin, 2022), chosen here and configurable.
    """

    def __init__(self, temperature: float = 0.05, *, gather: bool = True):
        super().__init__()
        temperature = float(temperature)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.gather = bool(gather)

    def forward(self, q: Tensor, d: Tensor, labels: Tensor) -> LossOutput:
        if q.dim() != 2 or d.shape != q.shape:
            raise ValueError(f"q and d must both have shape (N, D); got {tuple(q.shape)} and {tuple(d.shape)}")
        labels = torch.as_tensor(labels, device=q.device)
        if labels.shape != (q.shape[0],) or not torch.isfinite(labels.double()).all():
            raise ValueError(f"labels must be {q.shape[0]} finite gold scores, got shape {tuple(labels.shape)}")
        dtype = torch.promote_types(q.dtype, torch.float32)
        scores = (normalize(q.to(dtype)) * normalize(d.to(dtype))).sum(-1)
        if self.gather and dist_info()[1] > 1:
            scores = gather_with_grad(scores[:, None])[:, 0]
            labels = all_gather_no_grad(labels)
        loss = cosent(scores, labels.to(dtype), self.temperature)
        with torch.no_grad():
            ordered = int((labels[:, None] > labels[None, :]).sum())
        return LossOutput(loss, {"ordered_pairs": float(ordered), "pos_sim": float(scores.detach().mean())})

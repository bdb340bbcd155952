"""Reranker training losses on the yes/no logit difference z = logit_yes - logit_no of each (query, document).

Pointwise (Qwen3-VL-Reranker, METHODS §8.3, the report's Eq. 4): L = -log p(l | I, q, d) with
p = softmax over the two logits (logit_yes, logit_no), l = yes for a positive and no for a negative.
The two-way softmax depends on z only (p(yes) = sigmoid(z)), so L is the binary cross-entropy of z
against the label; it is averaged over every scored pair (positives and negatives alike: the report
does not weight them, so neither do we).

Listwise (an option, not in the report): a softmax over one positive and its K negatives,
L = -log softmax(z_pos, z_neg_1..K)[pos], averaged over groups. It only learns the order within a
group, so its sigmoid(z) is no calibrated probability; the pointwise loss is the default because the
served score sigmoid(z) is then exactly the probability it was trained to be.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omniret.losses.base import LossOutput

KINDS = ("pointwise", "listwise")


def pointwise_loss(z: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
    """-log p(label) under softmax(logit_yes, logit_no), from z = logit_yes - logit_no (labels: 1 yes, 0 no)."""
    return F.binary_cross_entropy_with_logits(z.float(), labels.float(), reduction=reduction)


def listwise_loss(z: Tensor, reduction: str = "mean") -> Tensor:
    """(G, 1 + K) logit differences, the positive in column 0 -> -log softmax(row)[0]."""
    losses = -torch.log_softmax(z.float(), dim=-1)[:, 0]
    return losses.mean() if reduction == "mean" else losses.sum() if reduction == "sum" else losses


class RerankLoss(nn.Module):
    """``forward(z, group_size)``: z is (G * group_size,) group-major, each group the positive then its
    negatives. Returns the loss summed over the given rows divided by ``normalizer`` (the number of
    pairs, or groups, of the whole local batch), so chunk losses add up to the batch mean."""

    def __init__(self, kind: str = "pointwise"):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"rerank loss must be one of {KINDS}, got {kind!r}")
        self.kind = kind

    def normalizer(self, groups: int, group_size: int) -> int:
        return groups * group_size if self.kind == "pointwise" else groups

    def forward(self, z: Tensor, group_size: int, normalizer: int | None = None) -> LossOutput:
        groups = z.view(-1, group_size)
        norm = normalizer or self.normalizer(groups.shape[0], group_size)
        if self.kind == "pointwise":
            labels = torch.zeros_like(groups, dtype=torch.float32)
            labels[:, 0] = 1.0
            loss = pointwise_loss(groups.reshape(-1), labels.reshape(-1), reduction="sum") / norm
        else:
            loss = listwise_loss(groups, reduction="sum") / norm
        with torch.no_grad():
            p = torch.sigmoid(groups.float())
            metrics = {"p_yes_pos": float(p[:, 0].mean())}
            if group_size > 1:
                metrics["p_yes_neg"] = float(p[:, 1:].mean())
                metrics["pos_above_neg"] = float((groups[:, :1] > groups[:, 1:]).float().mean())
        return LossOutput(loss, metrics)

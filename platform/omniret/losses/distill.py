"""Distillation of a reranker into the embedder (Qwen3-VL-Embedding stage s2, METHODS §8.2).

Each query row has candidates ``[positive, negative_1 .. negative_K]``. The teacher (the reranker) scored
them offline (``Pair.teacher_scores``, one logit per candidate, positive first); the student is the cosine
of the query with each candidate's embedding. Both become softmaxes over the same K + 1 candidates::

    P_rr(d_i|q)  = softmax_i(s_rr(q, d_i) / tau_teacher)
    P_emb(d_i|q) = softmax_i(cos(q, d_i) / tau)
    L            = -sum_i P_rr(d_i|q) log P_emb(d_i|q)             (mean over query rows)

The report gives the formula but no temperatures (UNVERIFIED): ``temperature`` (the student's, the
contrastive default 0.02) and ``teacher_temperature`` (1.0: the reranker's yes-minus-no logit as it is)
are options. The value is the cross-entropy of the formula, not the KL divergence; they differ by the
teacher's entropy, a constant, so the gradients are the same. A one-hot teacher reduces it to the
cross-entropy of the positive over its own candidates.

``base`` adds the distillation term to a contrastive loss from the registry:
``L = L_base + distill_weight * L_distill`` (alone, the weight does not apply; the base loss is built with ``temperature`` unless
``base_options`` sets its own). In-batch targets are not distillation candidates: the teacher scored only
each query's own positive and negatives.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from omniret.losses.base import ContrastiveBatch, ContrastiveLoss, LossOutput, check_non_negative
from omniret.losses.temperature import TemperatureModule


def distillation_cross_entropy(student: Tensor, teacher: Tensor, tau: Tensor | float,
                               teacher_tau: float) -> Tensor:
    """Per-row ``-sum_i softmax(teacher / teacher_tau)_i * log_softmax(student / tau)_i`` over (B, C) logits."""
    if isinstance(tau, Tensor) and tau.dim() == 1:
        tau = tau[:, None]
    target = torch.softmax(teacher.to(student.dtype) / teacher_tau, dim=-1)
    return -(target * F.log_softmax(student / tau, dim=-1)).sum(-1)


class DistillLoss(ContrastiveLoss):
    """Reranker-to-embedder distillation, alone or added to a contrastive ``base`` loss (module docstring)."""

    supports_teacher_scores = True

    def __init__(
        self,
        temperature: float | TemperatureModule = 0.02,
        *,
        teacher_temperature: float = 1.0,
        base: str | None = None,
        base_options: dict[str, Any] | None = None,
        distill_weight: float = 1.0,
        learn_temperature: bool = False,
        normalize_inputs: bool = True,
        gather: bool = True,
    ):
        super().__init__(temperature, learn_temperature=learn_temperature, normalize_inputs=normalize_inputs,
                         gather=gather)
        self.teacher_temperature = float(teacher_temperature)
        if not self.teacher_temperature > 0:
            raise ValueError(f"teacher_temperature must be > 0, got {teacher_temperature!r}")
        self.distill_weight = check_non_negative("distill_weight", distill_weight)
        self.base: ContrastiveLoss | None = None
        if base is not None:
            from omniret.losses.registry import build_loss  # the registry imports this module

            if str(base).lower() == "distill":
                raise ValueError("base must be a contrastive loss, not distill itself")
            options = {"temperature": temperature if isinstance(temperature, float | int) else 0.02,
                       **(base_options or {})}
            self.base = build_loss(base, **options)
            # Positive masks are the base loss's business; the loop asks the outer loss.
            self.supports_positive_mask = self.base.supports_positive_mask
        elif base_options:
            raise ValueError("base_options needs base")

    def forward(self, q: Tensor, t: Tensor, negatives: Tensor | None = None, **kwargs: Any) -> LossOutput:
        out = super().forward(q, t, negatives, **kwargs)
        if self.base is None:
            return out
        kwargs.pop("teacher_scores", None)
        base = self.base(q, t, negatives, **kwargs)
        metrics = {**base.metrics, "base_loss": float(base.loss.detach()), **out.metrics}
        return LossOutput(base.loss + self.distill_weight * out.loss, metrics)

    def compute(self, batch: ContrastiveBatch) -> LossOutput:
        k = batch.num_negatives
        teacher = batch.teacher_scores
        if k == 0:
            raise ValueError("distillation needs each query's hard negatives (train.negatives >= 1)")
        if teacher is None:
            raise ValueError("distillation needs teacher_scores: score the pairs with the reranker first "
                             "(omniret score-pairs)")
        if teacher.shape != (batch.rows, k + 1):
            raise ValueError(f"teacher_scores must have shape (B, 1 + K) = ({batch.rows}, {k + 1}), "
                             f"got {tuple(teacher.shape)}")
        if not torch.isfinite(teacher).all():
            raise ValueError("teacher_scores must be finite")
        assert batch.negatives is not None
        candidates = torch.cat([batch.t[:, None, :], batch.negatives], dim=1)  # (B, 1 + K, D)
        student = torch.einsum("bd,bcd->bc", batch.q, candidates)
        tau = self.row_temperature(batch)
        per_row = distillation_cross_entropy(student, teacher, tau, self.teacher_temperature)
        loss = batch.reduce_rows(per_row)
        metrics = self.base_metrics(batch, tau)
        with torch.no_grad():
            agree = (student.argmax(-1) == teacher.argmax(-1)).float().mean()
        metrics.update({"distill": float(loss.detach()), "teacher_agreement": float(agree),
                        "num_negatives": float(k)})
        return LossOutput(loss, metrics)

    def extra_repr(self) -> str:
        return (f"teacher_temperature={self.teacher_temperature}, distill_weight={self.distill_weight}, "
                f"base={type(self.base).__name__ if self.base is not None else None}")

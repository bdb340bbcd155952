"""Qwen3-VL-Embedding retrieval loss: InfoNCE with q-q, d-d, q-d in-batch terms and a relative false-negative mask.

See :mod:`omniret.losses.base` for the logit layout and the distributed convention.
"""

from __future__ import annotations

import torch
from torch import Tensor

from omniret.losses.base import (
    DUPLICATE_COSINE,
    ContrastiveBatch,
    ContrastiveLoss,
    LossOutput,
    check_non_negative,
    masked_logsumexp,
    rows_without_negatives,
)
from omniret.losses.temperature import TemperatureModule


class Qwen3VLEmbeddingLoss(ContrastiveLoss):
    """Qwen3-VL-Embedding / Qwen3-Embedding contrastive loss (Qwen3-VL-Embedding tech report §3.3; METHODS §8.2).

    For local query row i with positive document ``d_i+`` (= ``t_i``), explicit negatives ``d-_ik`` and the
    B_g global in-batch queries q_j / documents d_j (the other rows' positives)::

        l_i = -log( exp(s(q_i, d_i+)/tau) / Z_i )
        Z_i = exp(s(q_i,d_i+)/tau) + sum_k m_ik exp(s(q_i,d-_ik)/tau)
              + sum_{j!=i} m_ij exp(s(q_i,q_j)/tau)        (use_qq)
              + sum_{j!=i} m_ij exp(s(d_i+,d_j)/tau)       (use_dd)
              + sum_{j!=i} m_ij exp(s(q_i,d_j)/tau)
        m = 0  if  s > s(q_i, d_i+) + margin  (s = that term's own similarity)  or  d_j / d-_ik duplicates d_i+

    Stage 1 uses all terms; Stage 2 drops q-q and d-d (``use_qq=use_dd=False``). ``margin`` = 0.1 (report);
    ``margin=None`` disables the relative rule (duplicates are still masked).

    Choices where the report is silent:

    * tau defaults to 0.02, this project's cosine temperature (METHODS §0.2); the report does not state tau.
    * "d_j = d_i+" comes from ``positive_mask`` (True where two rows' positives have the same content; the
      training loop builds it from content keys): a duplicate index j is masked in all three in-batch terms.
      Embeddings of the same content differ under bf16 and different padding, so a cosine test is not
      reliable; the loop's inputs also never put a copy of d_i+ among row i's explicit negatives. Without a
      mask (direct calls) duplicates are detected on embeddings, cosine > ``duplicate_threshold``
      (1 - 1e-6: the same item embedded twice in one forward pass), in-batch and among explicit negatives.
    * The d-d and q-d terms range over the in-batch *positive* documents only, not other rows' hard negatives.
    * The mask is a hard 0/1 decision on detached similarities (it carries no gradient).
    """

    needs_global_queries = True
    supports_positive_mask = True

    def __init__(
        self,
        temperature: float | TemperatureModule = 0.02,
        margin: float | None = 0.1,
        use_qq: bool = True,
        use_dd: bool = True,
        *,
        duplicate_threshold: float = DUPLICATE_COSINE,
        learn_temperature: bool = False,
        normalize_inputs: bool = True,
        gather: bool = True,
    ):
        super().__init__(temperature, learn_temperature=learn_temperature,
                         normalize_inputs=normalize_inputs, gather=gather)
        self.margin = None if margin is None else check_non_negative("margin", margin)
        self.use_qq, self.use_dd = bool(use_qq), bool(use_dd)
        self.needs_global_queries = self.use_qq
        duplicate_threshold = float(duplicate_threshold)
        if not -1.0 < duplicate_threshold < 1.0:
            raise ValueError(f"duplicate_threshold must be a cosine in (-1, 1), got {duplicate_threshold}")
        self.duplicate_threshold = duplicate_threshold

    def compute(self, batch: ContrastiveBatch) -> LossOutput:
        tau = self.row_temperature(batch)
        pos_sim = (batch.q * batch.t).sum(-1)
        blocks, excluded, duplicate = self._blocks(batch)
        sim = torch.cat(blocks, dim=1)
        keep = ~torch.cat(excluded, dim=1) & ~torch.cat(duplicate, dim=1)
        if self.margin is not None:
            keep &= sim.detach() <= pos_sim.detach()[:, None] + self.margin
        pos_logit = pos_sim / tau
        log_z = torch.logaddexp(pos_logit, masked_logsumexp(sim / tau[:, None], keep))
        per_row = log_z - pos_logit
        metrics = self.base_metrics(batch, tau)
        with torch.no_grad():
            candidates = (~torch.cat(excluded, dim=1)).sum(1)
            kept = keep.sum(1)
            metrics["num_negatives"] = float(kept.to(sim.dtype).mean())
            metrics["masked_per_row"] = float((candidates - kept).to(sim.dtype).mean())
            metrics.update(rows_without_negatives(kept))
        return LossOutput(batch.reduce_rows(per_row), metrics)

    def _blocks(self, batch: ContrastiveBatch) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Negative-term similarity blocks, their structural exclusions (self pairs) and duplicate masks."""
        rows, total = batch.rows, batch.global_batch
        own = torch.zeros(rows, total, dtype=torch.bool, device=batch.q.device)
        own[torch.arange(rows, device=own.device), batch.pos_cols] = True
        keyed = batch.positive_rows()
        with torch.no_grad():
            dup = (batch.t @ batch.t_all.T) > self.duplicate_threshold if keyed is None else keyed.clone()
        dup &= ~own  # the positive itself is not a negative duplicate; it is simply excluded
        blocks, excluded, duplicate = [batch.q @ batch.t_all.T], [own], [dup]  # q-d (positive excluded)
        if batch.negatives is not None and batch.num_negatives:
            blocks.append(torch.einsum("bd,bkd->bk", batch.q, batch.negatives))
            with torch.no_grad():
                neg_dup = torch.einsum("bd,bkd->bk", batch.t, batch.negatives) > self.duplicate_threshold
                if keyed is not None:  # content keys decided the duplicates upstream (see the class docstring)
                    neg_dup = torch.zeros_like(neg_dup)
            excluded.append(torch.zeros_like(neg_dup))
            duplicate.append(neg_dup)
        if self.use_qq:
            assert batch.q_all is not None
            blocks.append(batch.q @ batch.q_all.T)
            excluded.append(own)
            duplicate.append(dup)
        if self.use_dd:
            blocks.append(batch.t @ batch.t_all.T)
            excluded.append(own)
            duplicate.append(dup)
        return blocks, excluded, duplicate

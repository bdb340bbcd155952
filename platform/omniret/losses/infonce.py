"""InfoNCE (in-batch + explicit negatives, one-way or symmetric, multi-positive) and Chuang et al.'s debiased loss.

See :mod:`omniret.losses.base` for the logit layout and the distributed convention.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from omniret.losses.base import (
    ContrastiveBatch,
    ContrastiveLoss,
    LossOutput,
    check_probability,
    masked_logsumexp,
    one_hot_columns,
    rows_without_negatives,
    similarity_logits,
)
from omniret.losses.temperature import TemperatureModule


def _pad_columns(mask: Tensor, extra: int) -> Tensor:
    """Append ``extra`` all-False columns (the explicit negatives are never positives)."""
    return torch.cat([mask, mask.new_zeros(mask.shape[0], extra)], dim=1) if extra else mask


def _multi_positive_ce(logits: Tensor, positives: Tensor) -> Tensor:
    """Per-row ``-log(sum_pos exp / sum_all exp)``."""
    return torch.logsumexp(logits, dim=1) - masked_logsumexp(logits, positives)


class InfoNCE(ContrastiveLoss):
    """InfoNCE on cosine similarities with in-batch and explicit hard negatives (VLM2Vec form, METHODS §0, §10.1).

    One-way (q -> t), per local query row i over columns ``[B_g in-batch targets | K own negatives]``::

        l_i = -log( sum_{j in P_i} exp(S_ij / tau) / sum_j exp(S_ij / tau) )

    where ``P_i = {i}`` unless ``positive_mask`` (shape (B, B), True where target j is also a positive of
    query i, e.g. duplicate targets) adds more; its diagonal is always treated as positive. Explicit negatives
    are never positives.

    ``symmetric=True`` averages with the t -> q direction ``-log(exp(S_ii/tau) / sum_j exp(s(t_i, q_j)/tau))``,
    which uses in-batch queries only (the explicit negatives are documents, not queries) and the transposed
    ``positive_mask``. Under torch.distributed, ``positive_mask`` must be the global (B_g, B_g) mask for the
    symmetric loss; for the one-way loss the local rows (B, B_g) also work.

    ``label_only`` (Qwen3-VL-Embedding's classification objective, METHODS §8.2): rows whose negatives are
    only their explicit negatives (the query's wrong labels), with no in-batch target in the denominator:
    ``l_i = -log( exp(S_ii/tau) / (exp(S_ii/tau) + sum_k exp(s(q_i, n_ik)/tau)) )``. ``True``: every row;
    a list of task groups (e.g. ``[image_classification]``): the rows of those tasks (by ``task_ids``), the
    others keep in-batch negatives. Such rows need explicit negatives (``train.negatives``); without any
    their loss is 0 and they are counted in ``rows_without_negatives``. Not combined with ``symmetric``.

    Defaults: tau = 0.02 (VLM2Vec / LLaVE / QQMM / B3, METHODS §0.2). Source: van den Oord et al. 2018;
    VLM2Vec ``src/model/model.py`` (METHODS §10.1).
    """

    supports_positive_mask = True

    def __init__(
        self,
        temperature: float | TemperatureModule = 0.02,
        symmetric: bool = False,
        label_only: bool | Sequence[str] = False,
        *,
        learn_temperature: bool = False,
        normalize_inputs: bool = True,
        gather: bool = True,
    ):
        super().__init__(temperature, learn_temperature=learn_temperature,
                         normalize_inputs=normalize_inputs, gather=gather)
        self.symmetric = bool(symmetric)
        self.needs_global_queries = self.symmetric
        self.label_only = _label_only_tasks(label_only)
        if self.symmetric and self.label_only:
            raise ValueError("label_only negatives are one-way (query -> labels): use symmetric=False")

    def compute(self, batch: ContrastiveBatch) -> LossOutput:
        tau = self.row_temperature(batch)
        sim = similarity_logits(batch.q, batch.t_all, batch.negatives)
        positives = _pad_columns(self._positives(batch, transpose=False), batch.num_negatives)
        keep = self._label_only_keep(batch, positives)
        logits = sim / tau[:, None]
        if keep is not None:  # label-only rows: in-batch targets leave the denominator (and the positives)
            logits = logits.masked_fill(~keep, float("-inf"))
            positives = positives & keep
        per_row = _multi_positive_ce(logits, positives)
        loss = batch.reduce_rows(per_row)
        metrics = self.base_metrics(batch, tau)
        metrics.update(_negative_metrics(sim, positives, keep))
        if self.symmetric:
            assert batch.q_all is not None
            sim_t = batch.t @ batch.q_all.T
            per_row_t = _multi_positive_ce(sim_t / tau[:, None], self._positives(batch, transpose=True))
            metrics["loss_q2t"] = float(loss.detach())
            loss_t = batch.reduce_rows(per_row_t)
            metrics["loss_t2q"] = float(loss_t.detach())
            loss = 0.5 * (loss + loss_t)
        return LossOutput(loss, metrics)

    def _label_only_keep(self, batch: ContrastiveBatch, positives: Tensor) -> Tensor | None:
        """(B, B_g + K) columns that enter the denominator, or None (all): label-only rows keep their own
        positive and their explicit negatives only."""
        if not self.label_only:
            return None
        if self.label_only is True:
            rows = torch.ones(batch.rows, dtype=torch.bool, device=batch.q.device)
        else:
            if batch.task_ids is None:
                raise ValueError("label_only by task needs task_ids")
            ids = torch.as_tensor(batch.task_ids, device=batch.q.device).expand(batch.rows)
            rows = torch.isin(ids, torch.tensor(sorted(self.label_only), device=ids.device))
        keep = torch.ones_like(positives)
        own = one_hot_columns(batch.rows, batch.global_batch, batch.pos_cols)
        keep[:, :batch.global_batch] = ~rows[:, None] | own
        return keep

    def _positives(self, batch: ContrastiveBatch, *, transpose: bool) -> Tensor:
        """(B, B_g) boolean: the own positive plus any extra positives from ``positive_mask``."""
        own = one_hot_columns(batch.rows, batch.global_batch, batch.pos_cols)
        extra = batch.positive_rows(transpose)
        return own if extra is None else own | extra


def _label_only_tasks(value: bool | Sequence[str]) -> bool | frozenset[int]:
    """``True`` / ``False``, or the task ids of the named task groups."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        value = [value]
    from omniret.data.schema import TASK_GROUPS

    unknown = sorted(set(value) - set(TASK_GROUPS))
    if unknown:
        raise ValueError(f"label_only names unknown task groups {unknown}; choose from {list(TASK_GROUPS)}")
    return frozenset(TASK_GROUPS.index(name) for name in value) or False


def _negative_metrics(sim: Tensor, positives: Tensor, keep: Tensor | None = None) -> dict[str, float]:
    """Mean negative cosine, mean count of negatives per row that enter the denominator, and the rows with none."""
    with torch.no_grad():
        negatives = ~positives if keep is None else keep & ~positives
        count = negatives.sum(1).to(sim.dtype)
        total = count.sum()
        mean_sim = (sim * negatives).sum() / total if total > 0 else sim.new_zeros(())
        return {"num_negatives": float(count.mean()), "neg_sim": float(mean_sim),
                **rows_without_negatives(count)}


class DebiasedContrastive(ContrastiveLoss):
    """Debiased contrastive loss, exact original form of Chuang et al. 2020 (NeurIPS; code chingyaoc/DCL ``main.py``).

    Per local query row i with ``pos = exp(S_ii/t)``, ``neg_j = exp(S_ij/t)`` over its ``N = B_g - 1 + K``
    negatives (in-batch targets j != i and its K explicit negatives)::

        Ng  = ( sum_j neg_j - tau_plus * N * pos ) / (1 - tau_plus)
        Ng  = clamp(Ng, min = N * exp(-1/t))        # the smallest value N cosine negatives can take
        l_i = -log( pos / (pos + Ng) )

    Computed in log space with a detached row max, so exp(1/t) never overflows. ``tau_plus`` (class prior of
    false negatives) defaults to 0.1 as in the paper's code. Compare the e5-omni simplification in
    :class:`omniret.losses.e5omni.E5OmniLoss` (METHODS §3.2).

    Choice: t defaults to 0.02 (this project's cosine temperature, METHODS §0.2) rather than Chuang's 0.5,
    which was tuned for SimCLR image pre-training, not for VLM embedding fine-tuning.
    """

    def __init__(
        self,
        temperature: float | TemperatureModule = 0.02,
        tau_plus: float = 0.1,
        *,
        learn_temperature: bool = False,
        normalize_inputs: bool = True,
        gather: bool = True,
    ):
        super().__init__(temperature, learn_temperature=learn_temperature,
                         normalize_inputs=normalize_inputs, gather=gather)
        self.tau_plus = check_probability("tau_plus", tau_plus, high_open=True)

    def compute(self, batch: ContrastiveBatch) -> LossOutput:
        tau = self.row_temperature(batch)
        sim = similarity_logits(batch.q, batch.t_all, batch.negatives)
        logits = sim / tau[:, None]
        positives = _pad_columns(one_hot_columns(batch.rows, batch.global_batch, batch.pos_cols),
                                 batch.num_negatives)
        n_neg = sim.shape[1] - 1
        pos_logit = logits[positives]
        top = logits.detach().max(dim=1).values  # stabiliser; cancels exactly in the result
        neg_sum = torch.exp(logits.masked_fill(positives, float("-inf")) - top[:, None]).sum(1)
        pos_scaled = torch.exp(pos_logit - top)
        ng = (neg_sum - self.tau_plus * n_neg * pos_scaled) / (1.0 - self.tau_plus)
        log_floor = (math.log(n_neg) if n_neg > 0 else float("-inf")) - 1.0 / tau - top
        log_ng = _log_clamped(ng, log_floor)
        per_row = torch.logaddexp(pos_logit, log_ng + top) - pos_logit
        metrics = self.base_metrics(batch, tau)
        metrics.update(_negative_metrics(sim, positives))
        with torch.no_grad():
            metrics["clamped_frac"] = float((log_ng == log_floor).to(sim.dtype).mean())
        return LossOutput(batch.reduce_rows(per_row), metrics)


def _log_clamped(x: Tensor, log_floor: Tensor) -> Tensor:
    """``log(max(x, exp(log_floor)))`` without evaluating log of non-positive numbers (NaN-free gradients)."""
    above = (x > 0) & (torch.log(torch.where(x > 0, x, torch.ones_like(x))) > log_floor)
    safe = torch.where(above, x, torch.ones_like(x))
    return torch.where(above, torch.log(safe), log_floor)

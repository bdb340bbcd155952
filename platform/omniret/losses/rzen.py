"""RzenEmbed loss (false-negative masking + hardness weighting + task temperature) and LLaVE's hardness weighting.

See :mod:`omniret.losses.base` for the logit layout and the distributed convention.
"""

from __future__ import annotations

import torch
from torch import Tensor

from omniret.losses.base import (
    ContrastiveBatch,
    ContrastiveLoss,
    LossOutput,
    check_non_negative,
    masked_logsumexp,
    one_hot_columns,
    similarity_logits,
)
from omniret.losses.infonce import _negative_metrics, _pad_columns
from omniret.losses.temperature import TaskTemperature, TemperatureModule


def false_negative_mask(batch: ContrastiveBatch, threshold: float) -> Tensor:
    """(B, B_g + K) True where a negative is a false negative: ``s(candidate, t_i+) > threshold``.

    Target-target similarity, not query-target (RzenEmbed §3.3.1). The positive column itself is never masked.
    """
    with torch.no_grad():
        mask = similarity_logits(batch.t, batch.t_all, batch.negatives) > threshold
        mask[torch.arange(batch.rows, device=mask.device), batch.pos_cols] = False
    return mask


def hardness_shift(sim: Tensor, positives: Tensor, alpha: float) -> Tensor:
    """``alpha * sg(S_ij)`` on negative entries, 0 on positives: ``w_ij exp(S_ij/tau) = exp(S_ij/tau + shift)``."""
    return (alpha * sim.detach()).masked_fill(positives, 0.0)


class RzenEmbedLoss(ContrastiveLoss):
    """RzenEmbed InfoNCE with false-negative masking, hardness weighting and task temperature (arXiv 2510.27350).

    Per local query row i, columns ``[B_g in-batch targets | K own negatives]``, cosine S, row temperature
    ``tau_i``::

        l_i = -log( exp(S_ii/tau_i) / ( exp(S_ii/tau_i) + sum_{j != i, not FN} w_ij exp(S_ij/tau_i) ) )
        w_ij = exp(alpha * sg(S_ij))                                (§3.3.2, Robinson et al. 2021)
        FN(i, j)  <=>  s(t_j, t_i+) > delta   (in-batch);   s(n_ik, t_i+) > delta   (explicit)   (§3.3.1)

    The weight is applied as the logit shift ``alpha * sg(S_ij)`` on negatives only (METHODS §0.4, §1.1); false
    negatives are excluded from the denominator (logit -inf). Masking and weighting commute.

    Defaults: tau = 0.02, alpha = 9, delta = ``fn_threshold`` = 0.95 (§4.2). ``fn_threshold=None`` disables
    masking; ``alpha=0`` disables weighting. ``task_temperature=True`` uses :class:`TaskTemperature`
    (``num_tasks`` groups, tau_t = exp(theta_t), §3.4.3) initialised at ``temperature`` and selected by
    ``task_ids`` in forward.

    Choices where the paper is silent: the weight is stop-gradiented (as in LLaVE, METHODS §1.1/§12.2); the
    task temperature starts at 0.02 (not stated, METHODS §1.2); the same FN rule is applied to the explicit
    negatives and the in-batch targets.
    """

    def __init__(
        self,
        temperature: float | TemperatureModule = 0.02,
        alpha: float = 9.0,
        fn_threshold: float | None = 0.95,
        *,
        task_temperature: bool = False,
        num_tasks: int = 7,
        learn_temperature: bool = False,
        normalize_inputs: bool = True,
        gather: bool = True,
    ):
        if task_temperature:
            if isinstance(temperature, TemperatureModule):
                raise ValueError("task_temperature=True needs a float initial temperature")
            temperature = TaskTemperature(num_tasks, init=temperature)
        super().__init__(temperature, learn_temperature=learn_temperature,
                         normalize_inputs=normalize_inputs, gather=gather)
        self.alpha = check_non_negative("alpha", alpha)
        if fn_threshold is not None:
            fn_threshold = float(fn_threshold)
            if not -1.0 <= fn_threshold <= 1.0:
                raise ValueError(f"fn_threshold is a cosine and must lie in [-1, 1] (or None), got {fn_threshold}")
        self.fn_threshold = fn_threshold

    def compute(self, batch: ContrastiveBatch) -> LossOutput:
        tau = self.row_temperature(batch)
        sim = similarity_logits(batch.q, batch.t_all, batch.negatives)
        positives = _pad_columns(one_hot_columns(batch.rows, batch.global_batch, batch.pos_cols),
                                 batch.num_negatives)
        logits = sim / tau[:, None]
        if self.alpha:
            logits = logits + hardness_shift(sim, positives, self.alpha)
        if self.fn_threshold is None:
            keep = torch.ones_like(positives)
        else:
            keep = ~false_negative_mask(batch, self.fn_threshold)
        per_row = masked_logsumexp(logits, keep) - logits[positives]
        metrics = self.base_metrics(batch, tau)
        metrics.update(_negative_metrics(sim, positives, keep))
        metrics["fn_masked_per_row"] = float((~keep).sum(1).to(sim.dtype).mean())
        return LossOutput(batch.reduce_rows(per_row), metrics)


class LLaVELoss(RzenEmbedLoss):
    """LLaVE hardness-weighted InfoNCE (arXiv 2503.04812 §3.1; METHODS §11.1): no false-negative masking.

    ``l_i = -log( exp(S_ii/tau) / (exp(S_ii/tau) + sum_{j != i} exp(S_ij/tau + alpha*sg(S_ij))) )``, summed over
    the in-batch targets and the K explicit negatives. Defaults alpha = 9, tau = 0.02 (LLaVE §4.1). The
    stop-gradient is the paper's (the "reward model" is the policy model under sg).
    """

    def __init__(
        self,
        temperature: float | TemperatureModule = 0.02,
        alpha: float = 9.0,
        *,
        learn_temperature: bool = False,
        normalize_inputs: bool = True,
        gather: bool = True,
    ):
        super().__init__(temperature, alpha, None, learn_temperature=learn_temperature,
                         normalize_inputs=normalize_inputs, gather=gather)

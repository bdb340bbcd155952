"""QQMM-embed Explicit Gradient Amplifier (EGA), as an *interpretation*: the paper's formulas were not available.

What is known (METHODS §2): QQMM-embed (arXiv 2506.02020) analyses the InfoNCE gradients and "explicitly
amplif[ies] the gradients associated with hard negative samples"; hardness is relative to the positive
(RS-H: how close a negative's query-similarity is to the positive's); the update uses a term ``(P_bar - I)``;
the released training wrapper is plain InfoNCE at tau = 0.02 with an unused ``alpha = 1.0``. The exact RS-H
formula, the p -> p_bar mapping, re-normalisation and hyper-parameters were NOT recovered. Do not present
this module as paper-faithful.

See :mod:`omniret.losses.base` for the logit layout and the distributed convention.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from omniret.losses.base import (
    ContrastiveBatch,
    ContrastiveLoss,
    LossOutput,
    check_non_negative,
    one_hot_columns,
    similarity_logits,
)
from omniret.losses.infonce import _negative_metrics, _pad_columns
from omniret.losses.temperature import TemperatureModule

AmplifyMode = Literal["exp", "linear"]
AMPLIFY_MODES: tuple[str, ...] = ("exp", "linear")


def amplified_probabilities(
    logits: Tensor,
    sim: Tensor,
    positives: Tensor,
    beta: float,
    margin: float,
    mode: str = "exp",
    renormalize: bool = False,
) -> Tensor:
    """``P_bar``: the row softmax of ``logits`` with hard negatives' probabilities amplified (no gradient).

    ``h_ij = S_ij - S_ii`` (cosine units, relative to the row's positive). For negatives
    ``p_bar_ij = p_ij * exp(beta * relu(h_ij + margin))`` (``exp``) or ``p_ij * (1 + beta * relu(h_ij + margin))``
    (``linear``); the positive's probability is unchanged. ``renormalize=True`` rescales each row to sum 1.
    """
    with torch.no_grad():
        probs = torch.softmax(logits, dim=1)
        pos_sim = sim[positives].unsqueeze(1)
        excess = torch.relu(sim - pos_sim + margin)
        factor = torch.exp(beta * excess) if mode == "exp" else 1.0 + beta * excess
        p_bar = probs * factor.masked_fill(positives, 1.0)
        if renormalize:
            p_bar = p_bar / p_bar.sum(dim=1, keepdim=True)
        return p_bar


class _AmplifiedCrossEntropy(torch.autograd.Function):
    """Forward: ``scale * sum_i CE_i(logits)``; backward w.r.t. logits: ``scale * (P_bar - I)``."""

    @staticmethod
    def forward(ctx, logits: Tensor, p_bar: Tensor, positives: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        per_row = torch.logsumexp(logits, dim=1) - logits[positives]
        ctx.save_for_backward(p_bar - positives.to(p_bar.dtype))
        ctx.scale = scale
        return per_row.sum() * scale

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        (direction,) = ctx.saved_tensors
        return grad * ctx.scale * direction, None, None, None


def ega_cross_entropy(
    sim: Tensor,
    tau: Tensor | float,
    positives: Tensor,
    *,
    beta: float = 1.0,
    margin: float = 0.1,
    mode: str = "exp",
    renormalize: bool = False,
    scale: float | None = None,
) -> Tensor:
    """EGA on a cosine matrix ``sim`` (B, C) with one positive per row (``positives`` boolean (B, C)).

    Value: ``scale * sum_i -log softmax(sim_i / tau_i)[pos]`` (plain InfoNCE; ``scale`` defaults to 1/B).
    Gradient w.r.t. ``sim``: ``scale * (P_bar - I) / tau``, i.e. ``(P_bar - I) / (B tau)`` by default; it reaches
    ``tau`` through ``logits = sim / tau`` like the straight-through surrogate ``sum(sg(P_bar - I) * sim) / (B tau)``.
    """
    tau_t = torch.as_tensor(tau, dtype=sim.dtype, device=sim.device)
    logits = sim / (tau_t[:, None] if tau_t.dim() == 1 else tau_t)
    p_bar = amplified_probabilities(logits, sim, positives, beta, margin, mode, renormalize)
    scale = 1.0 / sim.shape[0] if scale is None else scale
    return _AmplifiedCrossEntropy.apply(logits, p_bar, positives, scale)


class ExplicitGradientAmplifier(ContrastiveLoss):
    """QQMM-embed EGA, **interpretation** (arXiv 2506.02020; exact formulas unavailable, see module docstring).

    Over the logits ``z = S / tau`` with columns ``[B_g in-batch targets | K own negatives]``:

    * forward value = plain InfoNCE ``-(1/B) sum_i log softmax(z_i)[i]`` (what to log; equals :class:`InfoNCE`);
    * backward: ``dL/dS = (P_bar - I) / (B tau)`` instead of InfoNCE's ``(P - I) / (B tau)``, where
      ``p_bar_ij = p_ij * exp(beta * relu(h_ij + margin))`` for negatives with RS-H-style hardness
      ``h_ij = S_ij - S_ii`` (``mode="linear"``: ``p_ij * (1 + beta * relu(h_ij + margin))``), the positive's
      ``p_ii`` unchanged, no row re-normalisation unless ``renormalize=True``.

    Negatives more similar to the query than ``S_ii - margin`` get a larger push; with ``beta=0`` the gradient is
    exactly InfoNCE's. Implemented as a custom autograd.Function on the logits (equivalent to the surrogate
    ``sum(sg(P_bar - I) * S) / (B tau)``). Without re-normalisation the rows of ``P_bar - I`` no longer sum to 0:
    the push from hard negatives outweighs the pull to the positive, which is the point of "amplification".

    Our choices (all UNVERIFIED): hardness in cosine units; ``beta = 1.0`` (after the unused ``alpha = 1.0`` of the
    released wrapper); ``margin = 0.1``; tau = 0.02 (the released wrapper's value).
    """

    def __init__(
        self,
        temperature: float | TemperatureModule = 0.02,
        beta: float = 1.0,
        margin: float = 0.1,
        mode: AmplifyMode = "exp",
        renormalize: bool = False,
        *,
        learn_temperature: bool = False,
        normalize_inputs: bool = True,
        gather: bool = True,
    ):
        super().__init__(temperature, learn_temperature=learn_temperature,
                         normalize_inputs=normalize_inputs, gather=gather)
        self.beta = check_non_negative("beta", beta)
        self.margin = float(margin)
        if not math.isfinite(self.margin):
            raise ValueError(f"margin must be a finite number, got {margin!r}")
        if mode not in AMPLIFY_MODES:
            raise ValueError(f"mode must be one of {AMPLIFY_MODES}, got {mode!r}")
        self.mode = mode
        self.renormalize = bool(renormalize)

    def compute(self, batch: ContrastiveBatch) -> LossOutput:
        tau = self.row_temperature(batch)
        sim = similarity_logits(batch.q, batch.t_all, batch.negatives)
        positives = _pad_columns(one_hot_columns(batch.rows, batch.global_batch, batch.pos_cols),
                                 batch.num_negatives)
        loss = ega_cross_entropy(sim, tau, positives, beta=self.beta, margin=self.margin, mode=self.mode,
                                 renormalize=self.renormalize, scale=batch.world_size / batch.global_batch)
        metrics = self.base_metrics(batch, tau)
        metrics.update(_negative_metrics(sim, positives))
        with torch.no_grad():
            hard = (sim - sim[positives].unsqueeze(1) + self.margin > 0) & ~positives
            metrics["amplified_per_row"] = float(hard.sum(1).to(sim.dtype).mean())
        return LossOutput(loss, metrics)

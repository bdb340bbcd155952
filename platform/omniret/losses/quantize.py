"""Quantisation-aware training of embeddings (Qwen3-VL-Embedding, METHODS §8.2 QAT): LSQ quantisers and a
wrapper that computes a loss on both the full and the quantised embeddings.

LSQ (Esser et al. 2020, "Learned Step Size Quantization"): with a learned step ``s`` and integer levels
``[-Q_N, Q_P]``,

    v_hat = round(clip(v / s, -Q_N, Q_P)) * s

The rounding passes gradients straight through (STE): ``d v_hat / d v = 1`` inside the clip range, 0
outside; ``d v_hat / d s = round(v/s) - v/s`` inside, ``-Q_N`` or ``Q_P`` outside, times the gradient scale
``g = 1 / sqrt(N * Q_P)``, where N is the number of features (the embedding dimension; the paper's N_F).
int8 uses ``Q_N = 128, Q_P = 127``. Binary uses the levels {-1, +1} (``sign`` in place of ``round``, clip
to [-1, 1], ``Q_P = 1``); the paper stops at 2 bits, so this 1-bit form is our extension: the same STE, the
same step gradient with ``sign(v/s) - v/s`` inside the range. The step is initialised from the first batch
as the paper does (``2 * mean|v| / sqrt(Q_P)``, averaged over ranks) unless ``init_step`` is given.

:class:`QuantizedLoss` wraps any loss: ``L = full_weight * inner(q, t, n) + sum_f w_f * inner(Q_f(q), Q_f(t),
Q_f(n))`` over the formats ``f`` in ``quantize`` (e.g. ``[int8, binary]``), with the inputs L2-normalised
before quantising (what the index stores). ``build_loss(..., quantize=[...])`` adds it; from a config:
``loss.options={quantize: [int8, binary]}``. The step sizes are loss parameters the optimiser trains.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from omniret.losses.base import ContrastiveLoss, LossOutput, check_non_negative, dist_info, normalize

#: format -> (Q_N, Q_P)
LEVELS = {"int8": (128, 127), "binary": (1, 1)}


def grad_scale(x: Tensor, scale: float) -> Tensor:
    """``x`` in forward; its gradient multiplied by ``scale`` in backward."""
    return (x - x * scale).detach() + x * scale


def round_pass(x: Tensor) -> Tensor:
    """``round(x)`` in forward, the identity's gradient in backward (straight-through)."""
    return (x.round() - x).detach() + x


def sign_pass(x: Tensor) -> Tensor:
    """``sign(x)`` (0 counts as +1) in forward, the identity's gradient in backward (straight-through)."""
    return (torch.where(x >= 0, 1.0, -1.0).to(x.dtype) - x).detach() + x


def lsq_quantize(v: Tensor, step: Tensor, fmt: str) -> Tensor:
    """LSQ fake-quantisation of ``v`` (..., N) with step ``step`` (module docstring); returns ``v_hat``."""
    q_n, q_p = LEVELS[fmt]
    s = grad_scale(step, 1.0 / math.sqrt(v.shape[-1] * q_p))
    x = torch.clamp(v / s, -q_n, q_p)
    return (round_pass(x) if fmt == "int8" else sign_pass(x)) * s


class LSQQuantizer(nn.Module):
    """One learned step for one format (``int8`` or ``binary``)."""

    def __init__(self, fmt: str, init_step: float | None = None, learn_step: bool = True):
        super().__init__()
        if fmt not in LEVELS:
            raise ValueError(f"unknown quantisation format {fmt!r}; choose one of {sorted(LEVELS)}")
        if init_step is not None and not init_step > 0:
            raise ValueError(f"init_step must be > 0, got {init_step!r}")
        self.fmt = fmt
        self.step = nn.Parameter(torch.tensor(float(init_step or 1.0)), requires_grad=learn_step)
        self.register_buffer("initialized", torch.tensor(init_step is not None))

    @torch.no_grad()
    def _init_from(self, v: Tensor) -> None:
        value = 2 * v.detach().abs().mean().float() / math.sqrt(LEVELS[self.fmt][1])
        if dist_info()[1] > 1:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value /= dist_info()[1]
        self.step.copy_(value.clamp_min(1e-8))
        self.initialized.fill_(True)

    def forward(self, v: Tensor) -> Tensor:
        if not bool(self.initialized):
            self._init_from(v)
        return lsq_quantize(v, self.step.to(v.dtype), self.fmt)

    def extra_repr(self) -> str:
        return f"fmt={self.fmt}, step={float(self.step.detach()):.4g}"


class QuantizedLoss(ContrastiveLoss):
    """The inner loss on the full embeddings plus, per format, on their LSQ-quantised copies."""

    def __init__(self, inner: ContrastiveLoss, formats: Sequence[str] = ("int8", "binary"),
                 weights: Sequence[float] | None = None, full_weight: float = 1.0, learn_step: bool = True):
        nn.Module.__init__(self)  # no temperature of its own: the inner loss owns it
        if not isinstance(inner, ContrastiveLoss):
            raise ValueError("inner must be a ContrastiveLoss")
        formats = [str(f).lower() for f in formats]
        if not formats or len(set(formats)) != len(formats):
            raise ValueError(f"quantize needs distinct formats out of {sorted(LEVELS)}, got {formats}")
        weights = [1.0] * len(formats) if weights is None else [check_non_negative("quantize weight", w)
                                                                for w in weights]
        if len(weights) != len(formats):
            raise ValueError(f"quantize weights must have one entry per format ({len(formats)}), got {len(weights)}")
        self.inner = inner
        self.quantizers = nn.ModuleDict({f: LSQQuantizer(f, learn_step=learn_step) for f in formats})
        self.weights = dict(zip(formats, weights, strict=True))
        self.full_weight = check_non_negative("full_weight", full_weight)
        # The training loop asks the outer loss what it accepts.
        self.supports_positive_mask = inner.supports_positive_mask
        self.supports_teacher_scores = inner.supports_teacher_scores
        self.needs_global_queries = inner.needs_global_queries

    def forward(self, q: Tensor, t: Tensor, negatives: Tensor | None = None, **kwargs) -> LossOutput:
        full = self.inner(q, t, negatives, **kwargs)
        total = self.full_weight * full.loss
        metrics = dict(full.metrics)
        dtype = torch.promote_types(q.dtype, torch.float32)  # at least fp32, as the base class computes
        q, t = normalize(q.to(dtype)), normalize(t.to(dtype))
        negatives = None if negatives is None else normalize(negatives.to(dtype))
        for fmt, quantizer in self.quantizers.items():
            # One step for queries, targets and negatives: they are compared on one grid.
            quantized = quantizer(torch.cat([q, t, *([negatives.flatten(0, 1)] if negatives is not None else [])]))
            qq, tq = quantized[:len(q)], quantized[len(q):2 * len(q)]
            nq = None if negatives is None else quantized[2 * len(q):].view_as(negatives)
            out = self.inner(qq, tq, nq, **kwargs)
            total = total + self.weights[fmt] * out.loss
            metrics[f"{fmt}/loss"] = float(out.loss.detach())
            metrics[f"{fmt}/step"] = float(quantizer.step.detach())
        return LossOutput(total, metrics)

    def extra_repr(self) -> str:
        return f"weights={self.weights}, full_weight={self.full_weight}"

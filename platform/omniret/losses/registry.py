"""Name -> loss class registry and :func:`build_loss`, the one constructor configs and trainers use."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from omniret.losses.base import ContrastiveLoss
from omniret.losses.distill import DistillLoss
from omniret.losses.e5omni import E5OmniLoss
from omniret.losses.infonce import DebiasedContrastive, InfoNCE
from omniret.losses.matryoshka import MatryoshkaLoss
from omniret.losses.qqmm import ExplicitGradientAmplifier
from omniret.losses.quantize import QuantizedLoss
from omniret.losses.qwen3vl import Qwen3VLEmbeddingLoss
from omniret.losses.rzen import LLaVELoss, RzenEmbedLoss

LOSSES: dict[str, type[ContrastiveLoss]] = {
    "infonce": InfoNCE,
    "dcl": DebiasedContrastive,
    "rzen": RzenEmbedLoss,
    "llave": LLaVELoss,
    "qwen3vl": Qwen3VLEmbeddingLoss,
    "e5omni": E5OmniLoss,
    "qqmm_ega": ExplicitGradientAmplifier,
    "distill": DistillLoss,
}


def available_losses() -> list[str]:
    return sorted(LOSSES)


def _accepted_kwargs(cls: type[ContrastiveLoss]) -> list[str]:
    params = inspect.signature(cls.__init__).parameters
    return [name for name in params if name != "self"]


def build_loss(
    name: str,
    *,
    matryoshka_dims: Sequence[int] | None = None,
    matryoshka_weights: Sequence[float] | None = None,
    quantize: Sequence[str] | None = None,
    quantize_weights: Sequence[float] | None = None,
    **kwargs: Any,
) -> ContrastiveLoss:
    """Build the loss registered as ``name`` with the papers' defaults, overridden by ``kwargs``.

    ``quantize`` (formats out of int8 / binary, optional ``quantize_weights``) adds the loss on LSQ-quantised
    embeddings (:class:`QuantizedLoss`); then ``matryoshka_dims`` (and optionally ``matryoshka_weights``)
    wraps the result in :class:`MatryoshkaLoss`.
    Unknown names or keyword arguments raise ValueError naming the valid choices.
    """
    key = str(name).lower()
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(available_losses())}")
    cls = LOSSES[key]
    accepted = _accepted_kwargs(cls)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"loss {key!r} does not take {unknown}; it accepts {accepted}")
    loss = cls(**kwargs)
    if quantize:
        loss = QuantizedLoss(loss, formats=list(quantize), weights=quantize_weights)
    elif quantize_weights is not None:
        raise ValueError("quantize_weights needs quantize")
    if matryoshka_dims is not None:
        loss = MatryoshkaLoss(loss, dims=matryoshka_dims, weights=matryoshka_weights)
    elif matryoshka_weights is not None:
        raise ValueError("matryoshka_weights needs matryoshka_dims")
    return loss

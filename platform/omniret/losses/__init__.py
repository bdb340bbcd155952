"""Contrastive losses for embedding training: pure torch modules over embeddings (never a model).

Every loss is a :class:`ContrastiveLoss` with ``forward(q, t, negatives=None, *, task_ids=None, q_modality=None,
t_modality=None, step=None, positive_mask=None) -> LossOutput``; build one by name with :func:`build_loss`.
:class:`CoSENTLoss` ranks graded-similarity pairs instead (``forward(q, d, labels)``). The distributed
convention (local queries vs gathered targets, loss scaled so DDP averaging yields the full-batch gradient)
is documented in :mod:`omniret.losses.base`.
"""

from __future__ import annotations

from omniret.losses.base import (
    ContrastiveBatch,
    ContrastiveLoss,
    LossOutput,
    all_gather_no_grad,
    gather_with_grad,
    normalize,
    similarity_logits,
)
from omniret.losses.cosent import CoSENTLoss, cosent
from omniret.losses.distill import DistillLoss, distillation_cross_entropy
from omniret.losses.e5omni import (
    E5OmniLoss,
    ModalityTemperature,
    NegativeCurriculum,
    coral_loss,
    group_whiten,
)
from omniret.losses.infonce import DebiasedContrastive, InfoNCE
from omniret.losses.matryoshka import MatryoshkaLoss
from omniret.losses.qqmm import ExplicitGradientAmplifier, amplified_probabilities, ega_cross_entropy
from omniret.losses.quantize import LSQQuantizer, QuantizedLoss, lsq_quantize
from omniret.losses.qwen3vl import Qwen3VLEmbeddingLoss
from omniret.losses.registry import LOSSES, available_losses, build_loss
from omniret.losses.rzen import LLaVELoss, RzenEmbedLoss
from omniret.losses.temperature import (
    FixedTemperature,
    LearnableTemperature,
    TaskTemperature,
    TemperatureModule,
    temperature_parameters,
)

__all__ = [
    "LOSSES",
    "CoSENTLoss",
    "ContrastiveBatch",
    "ContrastiveLoss",
    "DebiasedContrastive",
    "DistillLoss",
    "E5OmniLoss",
    "ExplicitGradientAmplifier",
    "FixedTemperature",
    "InfoNCE",
    "LLaVELoss",
    "LSQQuantizer",
    "LearnableTemperature",
    "LossOutput",
    "MatryoshkaLoss",
    "ModalityTemperature",
    "NegativeCurriculum",
    "QuantizedLoss",
    "Qwen3VLEmbeddingLoss",
    "RzenEmbedLoss",
    "TaskTemperature",
    "TemperatureModule",
    "all_gather_no_grad",
    "amplified_probabilities",
    "available_losses",
    "build_loss",
    "coral_loss",
    "cosent",
    "distillation_cross_entropy",
    "ega_cross_entropy",
    "gather_with_grad",
    "group_whiten",
    "lsq_quantize",
    "normalize",
    "similarity_logits",
    "temperature_parameters",
]

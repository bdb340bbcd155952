"""The per-step part of a training objective, as :class:`~omniret.training.loop.TrainWorker` drives it.

The worker owns everything objectives share: setup (pairs, mixture, sampler, model loading, LoRA or
full training), the optimizer and schedule, gradient clipping, checkpoints and resume, the logbook,
evaluation hooks and progress. An objective supplies one :class:`TrainStep`, built from the worker
once its model is loaded (``build(worker)``):

- ``net``: the module that is trained, already prepared by the worker's context (DDP on several
  workers); ``loss``: a module whose parameters (learnable temperatures) are trained in their own
  optimizer group and checkpointed with the rest (it may have none);
- ``inputs(pairs)``: encode this rank's share of the batch; the result has ``rows`` (usable rows;
  0 skips the step on every rank) and ``dropped`` ("pair id: reason" of pairs left out);
- ``run(inputs, step)``: forward, loss and backward; when it returns, the gradients are those of
  the global batch's loss on every rank (averaged over ranks), ready to clip and step;
- ``metrics(inputs, out)``: the objective's own columns of ``metrics.csv``;
- ``eval_models()``: the keyword arguments of :func:`omniret.eval.runner.evaluate` that score the
  model in training (``embedder=...`` and, for a reranker, ``reranker=...``).

Objectives: ``contrastive`` (:class:`~omniret.training.loop.ContrastiveStep`: GradCache or a plain
full-batch step over the registry's contrastive losses), ``rerank``
(:class:`~omniret.training.rerank.RerankStep`: yes/no cross-entropy of the reranker), ``ume_sft``
(:class:`~omniret.training.ume_sft.UmeSftStep`: UME-R1's SFT of a generative embedder), ``ume_grpo``
(:class:`~omniret.training.ume_grpo.GrpoStep`: UME-R1's GRPO, rollouts sampled inside the step),
``rematch`` (:class:`~omniret.training.rematch.ReMatchStep`: contrastive + orthogonality + multi-view
matching) and ``reason_sft`` (:class:`~omniret.training.reason_sft.ReasonSftStep`: next-token NLL of a
reasoner on stored ECR; it has no retrieval evaluation: the worker skips evaluating it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from torch import nn

from omniret.data.schema import Pair
from omniret.losses.base import LossOutput


class StepBatch(Protocol):
    rows: int
    dropped: list[str]


class TrainStep(Protocol):
    net: nn.Module
    loss: nn.Module

    def inputs(self, pairs: Sequence[Pair]) -> StepBatch: ...

    def run(self, inputs: Any, step: int) -> LossOutput: ...

    def metrics(self, inputs: Any, out: LossOutput) -> dict[str, float]: ...

    def eval_models(self) -> dict[str, Any]: ...


def build_step(worker) -> TrainStep:
    """The step of ``worker.cfg.train.objective`` on the worker's loaded model."""
    objective = worker.cfg.train.objective
    if objective == "rerank":
        from omniret.training.rerank import RerankStep

        return RerankStep(worker)
    if objective == "ume_sft":
        from omniret.training.ume_sft import UmeSftStep

        return UmeSftStep(worker)
    if objective == "rematch":
        from omniret.training.rematch import ReMatchStep

        return ReMatchStep(worker)
    if objective == "reason_sft":
        from omniret.training.reason_sft import ReasonSftStep

        return ReasonSftStep(worker)
    if objective == "ume_grpo":
        from omniret.training.ume_grpo import GrpoStep

        return GrpoStep(worker)
    from omniret.training.loop import ContrastiveStep

    return ContrastiveStep(worker)

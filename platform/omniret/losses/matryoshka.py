"""Matryoshka (MRL) wrapper: the inner loss applied to re-normalised prefix slices of the embeddings."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from omniret.losses.base import ContrastiveLoss, LossOutput, normalize


class MatryoshkaLoss(ContrastiveLoss):
    """``L = sum_d w_d * inner(norm(q[:, :d]), norm(t[:, :d]), norm(neg[..., :d]))`` (Kusupati et al. 2022).

    Qwen3-VL-Embedding computes every loss on prefix sub-vectors too, truncating then re-normalising (METHODS
    §8.1-§8.2, §12.10); losses with data-dependent terms (hardness weights, false-negative masks, curricula)
    are therefore evaluated per slice. The full dimension D is always included: appended with weight
    ``full_weight`` (1.0) when ``dims`` lacks it. ``weights`` default to 1 each and must match ``dims``.
    Every dim must be <= D (checked in forward, where D is known). Metrics of slice d are prefixed ``dim{d}/``.

    The default dims are a common MRL ladder; the Qwen3-VL report does not list its set (UNVERIFIED).
    Distributed: each slice's inner loss follows the base convention, so their weighted sum does too.
    """

    def __init__(
        self,
        inner: ContrastiveLoss,
        dims: Sequence[int] = (64, 128, 256, 512, 1024),
        weights: Sequence[float] | None = None,
        full_weight: float = 1.0,
    ):
        nn.Module.__init__(self)  # no temperature of its own: the inner loss owns it
        if not isinstance(inner, ContrastiveLoss) or isinstance(inner, MatryoshkaLoss):
            raise ValueError("inner must be a (non-Matryoshka) ContrastiveLoss")
        dims = [int(d) for d in dims]
        if not dims or any(d < 1 for d in dims) or len(set(dims)) != len(dims):
            raise ValueError(f"dims must be distinct integers >= 1, got {dims}")
        weights = [1.0] * len(dims) if weights is None else [float(w) for w in weights]
        if len(weights) != len(dims):
            raise ValueError(f"weights must have one entry per dim ({len(dims)}), got {len(weights)}")
        if any(w < 0 for w in [*weights, full_weight]):
            raise ValueError("Matryoshka weights must be >= 0")
        self.inner = inner
        self.supports_teacher_scores = inner.supports_teacher_scores
        self.dims = tuple(dims)
        self.weights = tuple(weights)
        self.full_weight = float(full_weight)

    def slices(self, full_dim: int) -> list[tuple[int, float]]:
        """``(dim, weight)`` pairs for embeddings of width ``full_dim``, ascending, full dim included."""
        too_big = [d for d in self.dims if d > full_dim]
        if too_big:
            raise ValueError(f"matryoshka dims {too_big} exceed the embedding dimension {full_dim}")
        pairs = dict(zip(self.dims, self.weights, strict=True))
        pairs.setdefault(full_dim, self.full_weight)
        return sorted(pairs.items())

    def forward(
        self,
        q: Tensor,
        t: Tensor,
        negatives: Tensor | None = None,
        *,
        task_ids: Tensor | int | None = None,
        q_modality: Tensor | None = None,
        t_modality: Tensor | None = None,
        step: int | None = None,
        positive_mask: Tensor | None = None,
        teacher_scores: Tensor | None = None,
    ) -> LossOutput:
        kwargs = {"task_ids": task_ids, "q_modality": q_modality, "t_modality": t_modality, "step": step,
                  "positive_mask": positive_mask}
        if teacher_scores is not None:  # only distillation losses take them; the others keep refusing them
            kwargs["teacher_scores"] = teacher_scores
        if q.dim() != 2:
            raise ValueError(f"q must have shape (B, D), got {tuple(q.shape)}")
        total = None
        metrics: dict[str, float] = {}
        for dim, weight in self.slices(q.shape[-1]):
            neg = None if negatives is None else normalize(negatives[..., :dim])
            out = self.inner(normalize(q[:, :dim]), normalize(t[:, :dim]), neg, **kwargs)
            total = weight * out.loss if total is None else total + weight * out.loss
            metrics[f"dim{dim}/loss"] = float(out.loss.detach())
            metrics.update({f"dim{dim}/{key}": value for key, value in out.metrics.items()})
        assert total is not None
        return LossOutput(total, metrics)

    def extra_repr(self) -> str:
        return f"dims={self.dims}, weights={self.weights}, full_weight={self.full_weight}"

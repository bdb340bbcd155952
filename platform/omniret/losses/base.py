"""Shared pieces of the contrastive losses: the base class, the output type, logits and the cross-rank gather.

Shapes (per rank): ``q`` (B, D) query embeddings, ``t`` (B, D) their positive targets, ``negatives``
(B, K, D) each query's own explicit hard negatives (or None). Embeddings are L2-normalised inside the loss,
so similarities are cosines (METHODS §0.2). The losses see embeddings only, never a model, which is what
GradCache's ``build_cache`` step needs (METHODS §10.2, §12.6).

Logit layout: row i (a local query) holds ``[s(q_i, t_j) for the B_g global in-batch targets | s(q_i, n_ik) for
its own K negatives]``, a ``B x (B_g + K)`` matrix whose positive sits at column ``offset + i`` (the diagonal
when there is one process).

Distributed convention (W = world size, B_g = global batch = sum of the local batches):

* Each rank computes the loss of its **local** queries against the **global** targets (and its own negatives).
  :func:`gather_with_grad` all-gathers the targets (and queries, when a loss needs them), re-inserting the
  local tensor so its autograd path survives, and **all-reduces (sums) the gradient of the gathered tensor in
  backward**. The target ``t_j`` of rank r also appears in the denominators of the other ranks' queries; the
  all-reduce routes those gradient contributions back to rank r. (VLM2Vec's re-insert-only gather is correct
  only when every rank computes the full global loss; with local queries the all-reduce is required.)
* A rank returns ``loss_r = W * (sum_{i local} l_i) / B_g + G``, where ``l_i`` are the per-row losses and ``G``
  are batch-global terms (e.g. e5-omni's CORAL) that every rank computes identically. Hence
  ``sum_r loss_r = W * L_full``: the mean of the rank losses is the single-process full-batch loss ``L_full``.
* Gradients: on rank r, autograd (plus the all-reduce) yields ``d(sum_r' loss_r')/dx_r = W * dL_full/dx_r``
  for the local embeddings ``x_r``. DDP averages parameter gradients over ranks (divides by W), so the model
  receives exactly ``dL_full/dtheta``. Loss-owned parameters (temperatures) get ``W * dL_full/dtau`` summed
  over ranks the same way: register the loss inside the DDP module, or all-reduce-*average* their grads.
* World size 1 (or torch.distributed not initialised): no communication, ``loss = mean_i l_i``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from omniret.losses.temperature import TemperatureModule, make_temperature

# Cosine above which two embeddings count as the same item (duplicate targets). Identical inputs give
# identical embeddings, whose cosine is 1 up to float rounding; distinct items are essentially never this close.
DUPLICATE_COSINE = 1.0 - 1e-6


@dataclass
class LossOutput:
    """A loss value and float metrics for logging (effective negatives, mean positive similarity, taus, ...)."""

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- helpers


def normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """L2-normalise along the last dimension."""
    return F.normalize(x, p=2.0, dim=-1, eps=eps)


def check_probability(name: str, value: float, *, low_open: bool = False, high_open: bool = False) -> float:
    """Return ``value`` as a float in [0, 1] (with optionally open ends), else raise ValueError."""
    value = float(value)
    too_low = value <= 0 if low_open else value < 0
    too_high = value >= 1 if high_open else value > 1
    if not math.isfinite(value) or too_low or too_high:
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")
    return value


def check_non_negative(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def similarity_logits(q: Tensor, targets: Tensor, negatives: Tensor | None = None) -> Tensor:
    """Cosine matrix ``[q @ targets.T | per-row q_i . n_ik]`` of shape ``(B, B_t + K)``."""
    sim = q @ targets.T
    if negatives is None or negatives.shape[1] == 0:
        return sim
    return torch.cat([sim, torch.einsum("bd,bkd->bk", q, negatives)], dim=1)


def one_hot_columns(rows: int, cols: int, pos_cols: Tensor) -> Tensor:
    """Boolean ``(rows, cols)`` matrix that is True at ``(i, pos_cols[i])``."""
    mask = torch.zeros(rows, cols, dtype=torch.bool, device=pos_cols.device)
    mask[torch.arange(rows, device=pos_cols.device), pos_cols] = True
    return mask


def masked_logsumexp(logits: Tensor, keep: Tensor) -> Tensor:
    """Row-wise logsumexp over the entries where ``keep`` is True (masked entries contribute nothing)."""
    return torch.logsumexp(logits.masked_fill(~keep, float("-inf")), dim=1)


def rows_without_negatives(counts: Tensor) -> dict[str, float]:
    """``{"rows_without_negatives": n}``: local rows whose masks left no negative in the denominator.

    Such a row's loss is exactly 0 and gives no gradient (a whole batch of them: loss 0, grad_norm 0).
    The training loop logs a warning and the count goes to metrics.csv; docs/RECIPES.md says what to do.
    """
    return {"rows_without_negatives": float((counts == 0).sum())}


def duplicate_mask(a: Tensor, b: Tensor, threshold: float = DUPLICATE_COSINE) -> Tensor:
    """True where normalised rows of ``a`` and ``b`` are the same item (cosine > ``threshold``)."""
    with torch.no_grad():
        return (a @ b.T) > threshold


# -------------------------------------------------------------------------------------------- distributed


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllReduceGrad(torch.autograd.Function):
    """Identity in forward; sums the incoming gradient over ranks in backward."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def _all_gather_parts(x: Tensor) -> list[Tensor]:
    """All-gather along dim 0 without autograd; ranks may hold different numbers of rows."""
    _, world = dist_info()
    x = x.detach().contiguous()
    size = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    if x.shape[0] < longest:  # all_gather needs equal shapes: pad, then strip
        x = torch.cat([x, x.new_zeros((longest - x.shape[0], *x.shape[1:]))])
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x)
    return [p[:n] for p, n in zip(parts, counts, strict=True)]


def all_gather_no_grad(x: Tensor) -> Tensor:
    """Concatenation of every rank's ``x`` along dim 0 (no gradient); ``x`` itself at world size 1."""
    _, world = dist_info()
    return x if world == 1 else torch.cat(_all_gather_parts(x))


def gather_with_offset(x: Tensor) -> tuple[Tensor, int]:
    """:func:`gather_with_grad` plus the global row index of the local block's first row."""
    rank, world = dist_info()
    if world == 1:
        return x, 0
    parts = _all_gather_parts(x)
    offset = sum(p.shape[0] for p in parts[:rank])
    parts[rank] = x  # re-insert the local tensor: its autograd path survives the gather
    return _AllReduceGrad.apply(torch.cat(parts)), offset


def gather_with_grad(x: Tensor) -> Tensor:
    """All-gather ``x`` (rows) across ranks, keeping the gradient path to the local rows.

    The local tensor is re-inserted into the gathered list (METHODS §0.3) and the gradient of the gathered
    tensor is summed over ranks in backward, so rank r's ``x`` receives the contributions of *every* rank's
    loss to its rows (see the module docstring for the loss-scaling convention). World size 1 returns ``x``.
    Every rank must call this (and later backward) in the same order: these are collectives.
    """
    return gather_with_offset(x)[0]


# ------------------------------------------------------------------------------------------------ batch


@dataclass
class ContrastiveBatch:
    """What a loss's :meth:`ContrastiveLoss.compute` sees: normalised local and gathered global embeddings."""

    q: Tensor  # (B, D) local queries, normalised
    t: Tensor  # (B, D) local positive targets, normalised
    negatives: Tensor | None  # (B, K, D) local explicit negatives, normalised
    t_all: Tensor  # (B_g, D) global targets; rows offset..offset+B-1 are the local t
    q_all: Tensor | None  # (B_g, D) global queries, only when the loss asked for them
    offset: int
    world_size: int
    task_ids: Tensor | int | None = None
    q_modality: Tensor | None = None
    t_modality: Tensor | None = None
    step: int | None = None
    positive_mask: Tensor | None = None  # (B or B_g, B_g) extra in-batch positives
    teacher_scores: Tensor | None = None  # (B, 1 + K) teacher logits of [positive, negatives] (distillation)

    @property
    def rows(self) -> int:
        return self.q.shape[0]

    @property
    def global_batch(self) -> int:
        return self.t_all.shape[0]

    @property
    def num_negatives(self) -> int:
        return 0 if self.negatives is None else self.negatives.shape[1]

    @property
    def pos_cols(self) -> Tensor:
        """Global column of each local row's positive."""
        return torch.arange(self.offset, self.offset + self.rows, device=self.q.device)

    def positive_rows(self, transpose: bool = False) -> Tensor | None:
        """``positive_mask`` as (B, B_g) rows of the local queries (transposed first when asked), or None.

        Accepts the global (B_g, B_g) mask or, without ``transpose``, the local rows (B, B_g).
        """
        mask = self.positive_mask
        if mask is None:
            return None
        rows, total = self.rows, self.global_batch
        mask = torch.as_tensor(mask, device=self.q.device).bool()
        if mask.shape == (total, total):
            mask = mask.T if transpose else mask
            return mask[self.offset: self.offset + rows]
        if mask.shape != (rows, total) or (transpose and rows != total):
            need = f"({total}, {total})" if transpose else f"({rows}, {total}) or ({total}, {total})"
            raise ValueError(f"positive_mask must have shape {need}, got {tuple(mask.shape)}")
        return mask.T if transpose else mask

    def reduce_rows(self, per_row: Tensor) -> Tensor:
        """Per-row losses -> this rank's share of the loss: ``W * sum(per_row) / B_g`` (module docstring)."""
        return per_row.sum() * (self.world_size / self.global_batch)


# ------------------------------------------------------------------------------------------------- base


class ContrastiveLoss(nn.Module):
    """Base class: validates and normalises inputs, gathers across ranks, then calls :meth:`compute`.

    Subclasses implement ``compute(batch) -> LossOutput`` with per-row losses reduced by
    ``batch.reduce_rows`` (plus batch-global terms added as they are); see the module docstring for the
    distributed convention. ``temperature`` (float or :class:`TemperatureModule`) and ``learn_temperature``
    build ``self.temperature``, which returns one tau per query row.
    """

    #: Set by losses that need the global query matrix (symmetric InfoNCE, q-q terms, CORAL).
    needs_global_queries: bool = False
    #: Set by losses that accept an explicit ``positive_mask``.
    supports_positive_mask: bool = False
    #: Set by losses that read ``teacher_scores`` (distillation); the others refuse them.
    supports_teacher_scores: bool = False

    def __init__(
        self,
        temperature: float | TemperatureModule = 0.02,
        *,
        learn_temperature: bool = False,
        normalize_inputs: bool = True,
        gather: bool = True,
    ):
        super().__init__()
        self.temperature = make_temperature(temperature, learn_temperature)
        self.normalize_inputs = bool(normalize_inputs)
        self.gather = bool(gather)

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
        """Loss of queries ``q`` (B, D) against targets ``t`` (B, D) and optional ``negatives`` (B, K, D).

        ``task_ids``: int or (B,) ints (task temperature). ``q_modality`` / ``t_modality``: (B, 4) presence
        masks over [text, image, audio, video] (e5-omni). ``step``: the optimiser step (curricula).
        ``positive_mask``: (B, B) extra in-batch positives (losses with ``supports_positive_mask``).
        ``teacher_scores``: (B, 1 + K) teacher logits of each row's [positive, negatives] (losses with
        ``supports_teacher_scores``).
        """
        self._validate(q, t, negatives, positive_mask)
        if teacher_scores is not None and not self.supports_teacher_scores:
            raise ValueError(f"{type(self).__name__} does not use teacher_scores")
        batch = self._make_batch(q, t, negatives)
        batch.task_ids, batch.q_modality, batch.t_modality = task_ids, q_modality, t_modality
        batch.step, batch.positive_mask, batch.teacher_scores = step, positive_mask, teacher_scores
        return self.compute(batch)

    def compute(self, batch: ContrastiveBatch) -> LossOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- pieces used by subclasses

    def row_temperature(self, batch: ContrastiveBatch) -> Tensor:
        """(B,) temperatures of the local query rows, in the compute dtype."""
        return self.temperature(batch.task_ids, batch.rows).to(batch.q.dtype)

    def base_metrics(self, batch: ContrastiveBatch, tau: Tensor) -> dict[str, float]:
        with torch.no_grad():
            return {
                "pos_sim": float((batch.q * batch.t).sum(-1).mean()),
                "temperature": float(tau.mean()),
            }

    # -- internals

    def _validate(self, q: Tensor, t: Tensor, negatives: Tensor | None, positive_mask: Tensor | None) -> None:
        if q.dim() != 2 or t.shape != q.shape:
            raise ValueError(f"q and t must both have shape (B, D); got {tuple(q.shape)} and {tuple(t.shape)}")
        if q.shape[0] < 1 or q.shape[1] < 1:
            raise ValueError(f"q must be a non-empty (B, D) tensor, got {tuple(q.shape)}")
        if not (q.is_floating_point() and t.is_floating_point()):
            raise ValueError("q and t must be floating-point tensors")
        if negatives is not None and (negatives.dim() != 3 or negatives.shape[0] != q.shape[0]
                                      or negatives.shape[2] != q.shape[1]):
            raise ValueError(f"negatives must have shape (B, K, D) = ({q.shape[0]}, K, {q.shape[1]}); "
                             f"got {tuple(negatives.shape)}")
        if positive_mask is not None and not self.supports_positive_mask:
            raise ValueError(f"{type(self).__name__} does not support positive_mask")

    def _make_batch(self, q: Tensor, t: Tensor, negatives: Tensor | None) -> ContrastiveBatch:
        # Compute in at least fp32: logsumexp over logits of scale 1/tau = 50 is fragile in bf16.
        dtype = torch.promote_types(q.dtype, torch.float32)
        q, t = q.to(dtype), t.to(dtype)
        negatives = None if negatives is None else negatives.to(dtype)
        if self.normalize_inputs:
            q, t = normalize(q), normalize(t)
            negatives = None if negatives is None else normalize(negatives)
        world = dist_info()[1] if self.gather else 1
        if world == 1:
            t_all, offset = t, 0
            q_all = q if self.needs_global_queries else None
        else:
            t_all, offset = gather_with_offset(t)
            q_all = gather_with_grad(q) if self.needs_global_queries else None
        return ContrastiveBatch(q=q, t=t, negatives=negatives, t_all=t_all, q_all=q_all,
                                offset=offset, world_size=world)


def gather_rows_no_grad(x: Tensor | None, batch: ContrastiveBatch) -> Tensor | None:
    """Per-row side information (modality masks, ids) of the whole global batch."""
    if x is None or batch.world_size == 1:
        return x
    return all_gather_no_grad(x)

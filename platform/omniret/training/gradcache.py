"""GradCache: contrastive steps with batches far larger than fit in memory, with exact gradients.

A contrastive loss couples every item of the batch, so the batch cannot simply be split into
micro-batches. GradCache (Gao et al. 2021; VLM2Vec's wiring, METHODS.md §10.2) splits it anyway:

1. forward every chunk of queries, targets and hard negatives without autograd, keeping only the
   embeddings (and each chunk's RNG state, so dropout can be replayed);
2. compute the loss on the cached embeddings with autograd: this yields d loss / d embedding for
   every row, and the gradients of loss-owned parameters (learnable temperatures) directly;
3. forward each chunk again with autograd under its saved RNG state and backpropagate
   ``sum(embedding * cached_gradient)``, which carries exactly the loss's gradient into the model.

Peak activation memory is that of one chunk, whatever the batch size; the price is one extra
forward per item. Autocast (when enabled) wraps each chunk's forward only, never the loss step.

Under DDP every chunk runs inside ``no_sync`` and the accumulated gradients are averaged across ranks
once, after the last chunk. Letting DDP's hooks synchronise during the last chunk's backward (the
usual ``no_sync`` on all but the last) is wrong here: a chunk need not touch every parameter (a
text-only chunk never reaches the vision tower), and DDP then never reduces what the last chunk
left out, so ranks silently train on different gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from omniret.losses.base import LossOutput


@dataclass
class RngState:
    """CPU and CUDA generator states captured before a chunk's first forward."""

    cpu: Tensor
    cuda: list[Tensor]

    @classmethod
    def capture(cls) -> RngState:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        return cls(torch.get_rng_state(), cuda)

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block with the captured state, then restore the generators as they were."""
        devices = list(range(len(self.cuda)))
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda:
                torch.cuda.set_rng_state_all(self.cuda)
            yield


def chunked(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    return [items[i:i + size] for i in range(0, len(items), size)]


class GradCache:
    """Drive ``model`` and ``loss`` through the three GradCache passes.

    ``model(batch) -> (n, D)`` embeds one collated chunk; ``collate(items) -> batch`` turns a slice
    of the raw inputs into that batch (so chunks can be cut from any input list, visuals included).
    ``loss(q, t, negatives, **kwargs) -> LossOutput`` sees embeddings only.
    """

    def __init__(self, model: nn.Module, loss: Callable[..., LossOutput], collate: Callable[[Sequence[Any]], Any],
                 query_chunk_size: int = 8, target_chunk_size: int = 8,
                 autocast_dtype: torch.dtype | None = None):
        self.model = model
        self.loss = loss
        self.collate = collate
        self.query_chunk_size = query_chunk_size
        self.target_chunk_size = target_chunk_size
        self.autocast_dtype = autocast_dtype

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        device = next(self.model.parameters()).device.type
        return torch.autocast(device_type=device, dtype=self.autocast_dtype)

    def _embed(self, chunk: Sequence[Any]) -> Tensor:
        with self._autocast():
            return self.model(self.collate(chunk)).float()

    def _cache_forward(self, chunks: list[Sequence[Any]]) -> tuple[Tensor, list[RngState]]:
        states, reps = [], []
        with torch.no_grad():
            for chunk in chunks:
                states.append(RngState.capture())
                reps.append(self._embed(chunk))
        return torch.cat(reps), states

    def _no_sync(self) -> contextlib.AbstractContextManager:
        return self.model.no_sync() if hasattr(self.model, "no_sync") else contextlib.nullcontext()

    def step(self, queries: Sequence[Any], targets: Sequence[Any], negatives: Sequence[Any] | None = None,
             **loss_kwargs: Any) -> LossOutput:
        """One training step's forward and backward; parameter ``.grad``s hold the full-batch gradient.

        ``negatives`` is the flat list of every query's K hard negatives (query-major, B*K items).
        The optimizer step is the caller's.
        """
        groups = [chunked(queries, self.query_chunk_size), chunked(targets, self.target_chunk_size)]
        if negatives:
            if len(negatives) % len(queries):
                raise ValueError(f"{len(negatives)} negatives for {len(queries)} queries: need K per query")
            groups.append(chunked(negatives, self.target_chunk_size))
        cached = [self._cache_forward(chunks) for chunks in groups]

        reps = [rep.detach().requires_grad_() for rep, _ in cached]
        neg = reps[2].view(len(queries), -1, reps[2].shape[-1]) if negatives else None
        out = self.loss(reps[0], reps[1], neg, **loss_kwargs)
        out.loss.backward()  # gradients w.r.t. the cached embeddings and loss-owned parameters

        jobs = [(chunk, grad_rows, state)
                for (chunks, (_, states)), leaf in zip(zip(groups, cached, strict=True), reps, strict=True)
                for chunk, grad_rows, state in zip(chunks, leaf.grad.split([len(c) for c in chunks]), states,
                                                   strict=True)]
        with self._no_sync():
            for chunk, grad_rows, state in jobs:
                with state.replay():
                    (self._embed(chunk) * grad_rows).sum().backward()
        if hasattr(self.model, "no_sync"):
            average_gradients(self.model)
        return LossOutput(out.loss.detach(), out.metrics)


def average_gradients(model: nn.Module) -> None:
    """Average the trainable parameters' gradients over ranks in one flat all-reduce.

    A parameter no chunk used has no gradient yet; it gets zeros so every rank reduces the same tensors.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for p, values in zip(params, flat.split([p.numel() for p in params]), strict=True):
        p.grad.copy_(values.view_as(p))

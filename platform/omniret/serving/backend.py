"""What the HTTP routes call: embedding, reranking and the index, in-process or through Ray Serve.

The routes depend on :class:`Backend` only, so the same FastAPI app runs inside the Serve ingress
(``HandleBackend``: calls to the Embedder/Reranker deployments) and in a plain process
(``LocalBackend``: the model in this process), which is also the single-process baseline of the
serving benchmark.

Model calls return :class:`Outcome` values rather than raising, so one request's bad image fails
that request alone, never the dynamic batch it was merged into.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from omniret.errors import MediaError
from omniret.items import Item
from omniret.models.pooling import matryoshka


@dataclass
class Outcome:
    """Vectors or scores for one request, or the error that stopped it."""

    values: np.ndarray | None = None
    error_source: str | None = None
    error_reason: str | None = None

    @classmethod
    def failed(cls, exc: MediaError) -> Outcome:
        return cls(None, exc.source, exc.reason)

    def unwrap(self) -> np.ndarray:
        if self.values is None:
            raise MediaError(self.error_source or "input", self.error_reason or "failed")
        return self.values


class Backend(Protocol):
    model_id: str  # the embedder's
    dim: int
    rerank_model_id: str | None  # the reranker's (its own checkpoint); None: no reranker

    async def embed(self, items: list[Item], dimensions: int | None) -> Outcome: ...

    async def rerank(self, query: Item, documents: list[Item], instruction: str | None) -> Outcome: ...


def embed_jobs(embedder, jobs: list[tuple[list[Item], int | None]]) -> list[Outcome]:
    """Embed several requests' items together (one token-budget plan); one Outcome per request."""
    outcomes: list[Outcome | None] = [None] * len(jobs)
    prepared, owners = [], []
    for j, (items, _) in enumerate(jobs):
        try:
            encoded = embedder.prepare(items)
        except MediaError as exc:
            outcomes[j] = Outcome.failed(exc)
            continue
        prepared += encoded
        owners += [j] * len(encoded)
    vectors = embedder.encode_prepared(prepared, progress=False)
    owners_arr = np.asarray(owners, dtype=int)
    for j, (_, dimensions) in enumerate(jobs):
        if outcomes[j] is None:
            rows = vectors[owners_arr == j]
            if dimensions is not None:
                rows = matryoshka_np(rows, dimensions)
            outcomes[j] = Outcome(rows)
    return outcomes  # type: ignore[return-value]


def matryoshka_np(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    import torch

    return matryoshka(torch.from_numpy(vectors), dimensions).numpy()


def rerank_jobs(reranker, jobs: list[tuple[Item, list[Item], str | None]]) -> list[Outcome]:
    outcomes = []
    for query, documents, instruction in jobs:
        try:
            outcomes.append(Outcome(reranker.score(query, documents, instruction)))
        except MediaError as exc:
            outcomes.append(Outcome.failed(exc))
    return outcomes


class LocalBackend:
    """The model in this process; calls run in a worker thread so the event loop stays responsive."""

    def __init__(self, embedder, reranker=None):
        self.embedder = embedder
        self.reranker = reranker
        self.model_id = embedder.model_id
        self.rerank_model_id = reranker.model_id if reranker is not None else None
        self.dim = embedder.embed_cfg.dimensions or embedder.dim
        self._lock = asyncio.Lock()  # one model call at a time, like one replica

    async def embed(self, items: list[Item], dimensions: int | None) -> Outcome:
        async with self._lock:
            return (await asyncio.to_thread(embed_jobs, self.embedder, [(items, dimensions)]))[0]

    async def rerank(self, query: Item, documents: list[Item], instruction: str | None) -> Outcome:
        if self.reranker is None:
            raise RuntimeError("this backend has no reranker")
        async with self._lock:
            return (await asyncio.to_thread(rerank_jobs, self.reranker, [(query, documents, instruction)]))[0]


class HandleBackend:
    """Ray Serve deployment handles of the Embedder and Reranker deployments."""

    def __init__(self, embedder: Any, reranker: Any, model_id: str, dim: int, rerank_model_id: str | None = None):
        self.embedder, self.reranker = embedder, reranker
        self.model_id, self.dim, self.rerank_model_id = model_id, dim, rerank_model_id

    async def embed(self, items: list[Item], dimensions: int | None) -> Outcome:
        return await self.embedder.embed.remote(items, dimensions)

    async def rerank(self, query: Item, documents: list[Item], instruction: str | None) -> Outcome:
        return await self.reranker.rerank.remote(query, documents, instruction)

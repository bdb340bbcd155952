"""Ray Serve deployments: the Embedder and Reranker (dynamically batched) and the HTTP ingress.

Each model replica loads the checkpoint once. ``@serve.batch`` merges concurrent requests; the
merged requests are decoded in turns of at most ``serve.max_batch_pixels`` source pixels and split
again by token budget (``embed.batch_tokens``) so a batch of long videos and a batch of short texts
both fit. Model calls run in a worker thread so the replica keeps answering health checks while it
computes; any exception stays with the request that caused it.
"""

from __future__ import annotations

import asyncio

from ray import serve
from ray.serve import metrics

from omniret.config import OmniretConfig
from omniret.items import Item
from omniret.serving.backend import HandleBackend, Outcome, embed_jobs, rerank_jobs


@serve.deployment
class EmbedderDeployment:
    def __init__(self, cfg: dict):
        from omniret.models.embedder import Embedder

        self.cfg = OmniretConfig.model_validate(cfg)
        self.embedder = Embedder.from_config(self.cfg)
        self.embedder.embed_cfg = self.embedder.embed_cfg.model_copy(update={"progress": False})
        opts = self.cfg.serve.embedder
        self._batch.set_max_batch_size(opts.max_batch_size)
        self._batch.set_batch_wait_timeout_s(opts.batch_wait_timeout_s)
        self.items = metrics.Counter("omniret_embedded_items", description="Items embedded.")
        from omniret.serving.ume import ume_modes

        self.ume = ume_modes(self.embedder, self.cfg)  # None unless the checkpoint has UME-R1's tokens

    def info(self) -> dict:
        return {"model_id": self.embedder.model_id,
                "dim": self.embedder.embed_cfg.dimensions or self.embedder.dim, "ume_modes": self.ume is not None}

    async def embed_mode(self, items: list[Item], dimensions: int | None, mode: str, cost: int = 0) -> Outcome:
        """A UME-R1 mode (the ingress checked that this checkpoint has them)."""
        return await asyncio.to_thread(self.ume.embed, items, dimensions, mode, cost)

    async def embed(self, items: list[Item], dimensions: int | None, cost: int = 0) -> Outcome:
        return await self._batch((items, dimensions, cost))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _batch(self, jobs: list[tuple[list[Item], int | None, int]]) -> list[Outcome]:
        outcomes = await asyncio.to_thread(embed_jobs, self.embedder, jobs, self.cfg.serve.max_batch_pixels)
        embedded = sum(len(o.values) for o in outcomes if o.values is not None)
        if embedded:  # Ray counters refuse increments of 0
            self.items.inc(embedded)
        return outcomes


@serve.deployment
class RerankerDeployment:
    def __init__(self, cfg: dict):
        from omniret.models.reranker import Reranker

        self.cfg = OmniretConfig.model_validate(cfg)
        self.reranker = Reranker.from_config(self.cfg)
        opts = self.cfg.serve.reranker
        self._batch.set_max_batch_size(opts.max_batch_size)
        self._batch.set_batch_wait_timeout_s(opts.batch_wait_timeout_s)

    def info(self) -> dict:
        return {"model_id": self.reranker.model_id}

    async def rerank(self, query: Item, documents: list[Item], instruction: str | None, cost: int = 0) -> Outcome:
        return await self._batch((query, documents, instruction, cost))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _batch(self, jobs: list[tuple[Item, list[Item], str | None, int]]) -> list[Outcome]:
        return await asyncio.to_thread(rerank_jobs, self.reranker, jobs)


@serve.deployment
@serve.ingress()
class SearchIngress:
    """The HTTP front: routes from omniret.serving.routes over handles to the model deployments."""

    async def __init__(self, embedder, reranker, cfg: dict):
        from omniret.index.store import IndexStore

        self.cfg = OmniretConfig.model_validate(cfg)
        info, rerank_info = await embedder.info.remote(), await reranker.info.remote()
        serve_cfg = self.cfg.serve
        self.backend = HandleBackend(embedder, reranker, info["model_id"], info["dim"],
                                     serve_cfg.request_timeout_s, serve_cfg.health_timeout_s, rerank_info["model_id"])
        self.backend.ume_modes = info.get("ume_modes", False)
        # Never written from here; new ingests become visible after index.read_consistency_s.
        self.store = IndexStore(self.cfg.index)
        self.requests = metrics.Counter("omniret_http_requests", description="HTTP requests by path and status.",
                                        tag_keys=("path", "status"))

    def _count(self, path: str, status: int) -> None:
        self.requests.inc(tags={"path": path, "status": str(status)})

    def __serve_build_asgi_app__(self):
        from omniret.serving.ingestion import RayIngestor
        from omniret.serving.routes import create_api

        return create_api(self.backend, self.cfg, self.store, on_request=self._count,
                          ingestor=RayIngestor(self.cfg))

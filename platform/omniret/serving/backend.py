"""What the HTTP routes call: embedding, reranking and the index, in-process or through Ray Serve.

The routes depend on :class:`Backend` only, so the same FastAPI app runs inside the Serve ingress
(``HandleBackend``: calls to the Embedder/Reranker deployments) and in a plain process
(``LocalBackend``: the model in this process), which is also the single-process baseline of the
serving benchmark.

Model calls return :class:`Outcome` values rather than raising, so one request's bad image (or any
other exception) fails that request alone, never the dynamic batch it was merged into; handle calls
time out after ``serve.request_timeout_s``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from omniret.errors import MediaError, OmniretError
from omniret.items import Item
from omniret.models.pooling import matryoshka

log = logging.getLogger(__name__)


class ServerError(OmniretError):
    """A failure of the service itself (not of the request's input): answered with a 5xx."""

    def __init__(self, message: str, status: int = 500):
        self.message, self.status = message, status
        super().__init__(message)


@dataclass
class Outcome:
    """Vectors, scores or reasonings for one request, or the error that stopped it.

    ``status`` says whose fault an error is: 400 the request's input, 5xx the service.
    """

    values: np.ndarray | list | None = None
    error_source: str | None = None
    error_reason: str | None = None
    status: int = 200

    @classmethod
    def failed(cls, exc: Exception, source: str = "input") -> Outcome:
        if isinstance(exc, MediaError):
            return cls(None, exc.source, exc.reason, 400)
        if isinstance(exc, (ValueError, OverflowError, SyntaxError, EOFError)):
            # Raised while decoding this request's media by a library that does not say MediaError.
            log.warning("unusable input in %s: %r", source, exc)
            return cls(None, source, "the input could not be decoded", 400)
        log.error("model call failed for %s", source, exc_info=exc)
        return cls(None, source, "the model failed on this request; see the server log", 500)

    def unwrap(self) -> Any:
        if self.values is not None:
            return self.values
        if self.status >= 500:
            raise ServerError(self.error_reason or "internal error", self.status)
        raise MediaError(self.error_source or "input", self.error_reason or "failed")


class Backend(Protocol):
    model_id: str  # the embedder's
    dim: int
    rerank_model_id: str | None  # the reranker's (its own checkpoint); None: no reranker
    reasoner_model_id: str | None  # the reasoner's (omniret.reasoning.reasoner.reasoner_id); None: none deployed

    async def embed(self, items: list[Item], dimensions: int | None, cost: int = 0,
                    multivector: tuple[int, str] | None = None) -> Outcome: ...

    async def rerank(self, query: Item, documents: list[Item], instruction: str | None,
                     cost: int = 0) -> Outcome: ...

    async def reason(self, items: list[Item], cost: int = 0) -> Outcome: ...


def turns(costs: list[int], budget: int) -> list[list[int]]:
    """Split jobs (in order) into turns whose summed cost stays within ``budget``; a job over the
    budget on its own gets a turn of its own."""
    groups: list[list[int]] = []
    total = 0
    for j, cost in enumerate(costs):
        if groups and total + cost <= budget:
            groups[-1].append(j)
            total += cost
        else:
            groups.append([j])
            total = cost
    return groups


def embed_jobs(embedder, jobs: list[tuple], budget: int | None = None) -> list[Outcome]:
    """Embed several requests' items together; one Outcome per request, whatever fails.

    Jobs are decoded and embedded in turns of at most ``budget`` source pixels (their ``cost``), so
    a dynamic batch never holds more decoded media than that. An exception while decoding one
    request fails that request; one in a merged forward pass is retried request by request, so only
    the request that causes it fails. A job is (items, dimensions, cost) or (items, dimensions, cost,
    multivector): jobs asking for (K, source) token states get (N, 1 + K, D) arrays and are embedded
    apart from the others.
    """
    outcomes: list[Outcome | None] = [None] * len(jobs)
    groups = turns([job[2] for job in jobs], budget) if budget else [list(range(len(jobs)))]
    spec = [job[3] if len(job) > 3 else None for job in jobs]
    groups = [[j for j in g if spec[j] == s] for g in groups for s in dict.fromkeys(spec[j] for j in g)]
    for group in groups:
        multivector = spec[group[0]]
        prepared, owners = [], []
        for j in group:
            try:
                encoded = embedder.prepare(jobs[j][0])
            except Exception as exc:
                outcomes[j] = Outcome.failed(exc, _first_name(jobs[j][0]))
                continue
            prepared += encoded
            owners += [j] * len(encoded)
        if not prepared:
            continue
        try:
            vectors = embedder.encode_prepared(prepared, progress=False, multivector=multivector)
        except Exception as exc:
            if len(set(owners)) == 1:
                outcomes[owners[0]] = Outcome.failed(exc, _first_name(jobs[owners[0]][0]))
                continue
            for j in sorted(set(owners)):  # find the request that breaks the batch
                mine = [e for e, o in zip(prepared, owners, strict=True) if o == j]
                try:
                    outcomes[j] = _rows(embedder.encode_prepared(mine, progress=False, multivector=multivector),
                                        jobs[j][1])
                except Exception as inner:
                    outcomes[j] = Outcome.failed(inner, _first_name(jobs[j][0]))
            continue
        owners_arr = np.asarray(owners, dtype=int)
        for j in sorted(set(owners)):
            outcomes[j] = _rows(vectors[owners_arr == j], jobs[j][1])
    return outcomes  # type: ignore[return-value]


def _rows(vectors: np.ndarray, dimensions: int | None) -> Outcome:
    return Outcome(matryoshka_np(vectors, dimensions) if dimensions is not None else vectors)


def _first_name(items: list[Item]) -> str:
    return (items[0].name or "input").split("[")[0] if items else "input"


def matryoshka_np(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    import torch

    return matryoshka(torch.from_numpy(vectors), dimensions).numpy()


def rerank_jobs(reranker, jobs: list[tuple[Item, list[Item], str | None, int]]) -> list[Outcome]:
    """Score each request on its own; any exception stays with its request."""
    outcomes = []
    for query, documents, instruction, _ in jobs:
        try:
            outcomes.append(Outcome(reranker.score(query, documents, instruction)))
        except Exception as exc:
            outcomes.append(Outcome.failed(exc, "documents"))
    return outcomes


class LocalBackend:
    """The model in this process; calls run in a worker thread so the event loop stays responsive."""

    def __init__(self, embedder, reranker=None, batch_pixels: int | None = None, reasoner=None):
        self.embedder = embedder
        self.reranker = reranker
        self.reasoner = reasoner  # an omniret.reasoning.reasoner.Reasoner, or None
        self.model_id = embedder.model_id
        self.rerank_model_id = reranker.model_id if reranker is not None else None
        self.reasoner_model_id = None
        if reasoner is not None:
            from omniret.reasoning.reasoner import reasoner_id

            self.reasoner_model_id = reasoner_id(reasoner.cfg)
        self.dim = embedder.embed_cfg.dimensions or embedder.dim
        self.batch_pixels = batch_pixels
        self._lock = asyncio.Lock()  # one model call at a time, like one replica
        self.ume = None  # omniret.serving.ume.UmeModes of a UME-R1 checkpoint

    @property
    def ume_modes(self) -> bool:
        return self.ume is not None

    async def embed_mode(self, items: list[Item], dimensions: int | None, mode: str, cost: int = 0) -> Outcome:
        async with self._lock:
            return await asyncio.to_thread(self.ume.embed, items, dimensions, mode, cost)

    async def embed(self, items: list[Item], dimensions: int | None, cost: int = 0,
                    multivector: tuple[int, str] | None = None) -> Outcome:
        async with self._lock:
            return (await asyncio.to_thread(embed_jobs, self.embedder, [(items, dimensions, cost, multivector)],
                                            self.batch_pixels))[0]

    async def rerank(self, query: Item, documents: list[Item], instruction: str | None, cost: int = 0) -> Outcome:
        if self.reranker is None:
            raise RuntimeError("this backend has no reranker")
        async with self._lock:
            return (await asyncio.to_thread(rerank_jobs, self.reranker, [(query, documents, instruction, cost)]))[0]

    async def reason(self, items: list[Item], cost: int = 0) -> Outcome:
        from omniret.serving.reasoning import reason_jobs, serve_template

        if self.reasoner is None:
            raise RuntimeError("this backend has no reasoner")
        async with self._lock:
            return (await asyncio.to_thread(reason_jobs, self.reasoner, serve_template(self.reasoner.cfg),
                                            [(items, cost)], self.batch_pixels))[0]

    async def health(self) -> dict[str, str]:
        return {"embedder": "ok", "reranker": "ok" if self.reranker is not None else "absent",
                "reasoner": "ok" if self.reasoner is not None else "absent"}


class HandleBackend:
    """Ray Serve deployment handles of the Embedder, Reranker and (when deployed) Reasoner deployments.

    A call that gets no answer within ``timeout_s`` (a replica that died or hangs) is cancelled and
    answered with a 504, so no request waits forever.
    """

    def __init__(self, embedder: Any, reranker: Any, model_id: str, dim: int, timeout_s: float = 120.0,
                 health_timeout_s: float = 5.0, rerank_model_id: str | None = None, reasoner: Any = None,
                 reasoner_model_id: str | None = None):
        self.embedder, self.reranker, self.reasoner = embedder, reranker, reasoner
        self.model_id, self.dim, self.rerank_model_id = model_id, dim, rerank_model_id
        self.reasoner_model_id = reasoner_model_id if reasoner is not None else None
        self.timeout_s, self.health_timeout_s = timeout_s, health_timeout_s
        self.ume_modes = False  # the embedder replica serves UME-R1 modes (omniret.serving.ume)

    async def _call(self, response: Any, what: str, timeout_s: float) -> Any:
        async def wait() -> Any:
            return await response

        try:
            return await asyncio.wait_for(wait(), timeout_s)
        except asyncio.TimeoutError:
            response.cancel()
            raise ServerError(f"the {what} did not answer within {timeout_s:g} s", 504) from None
        except ServerError:
            raise
        except Exception as exc:
            from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

            log.error("%s call failed: %r", what, exc)
            if isinstance(exc, (RayActorError, ActorDiedError, ActorUnavailableError)):
                # The replica died mid-call or is being replaced; Serve starts a new one.
                raise ServerError(f"the {what} is unavailable; retry shortly", 503) from None
            raise ServerError(f"the {what} failed; see the server log", 500) from None

    async def embed(self, items: list[Item], dimensions: int | None, cost: int = 0,
                    multivector: tuple[int, str] | None = None) -> Outcome:
        return await self._call(self.embedder.embed.remote(items, dimensions, cost, multivector), "embedder",
                                self.timeout_s)

    async def embed_mode(self, items: list[Item], dimensions: int | None, mode: str, cost: int = 0) -> Outcome:
        return await self._call(self.embedder.embed_mode.remote(items, dimensions, mode, cost), "embedder",
                                self.timeout_s)

    async def rerank(self, query: Item, documents: list[Item], instruction: str | None, cost: int = 0) -> Outcome:
        return await self._call(self.reranker.rerank.remote(query, documents, instruction, cost), "reranker",
                                self.timeout_s)

    async def reason(self, items: list[Item], cost: int = 0) -> Outcome:
        return await self._call(self.reasoner.reason.remote(items, cost), "reasoner", self.timeout_s)

    async def health(self) -> dict[str, str]:
        """Ping each model deployment; a replica that is down or stuck reports why."""
        async def ping(handle: Any, what: str) -> str:
            try:
                await self._call(handle.info.remote(), what, self.health_timeout_s)
                return "ok"
            except ServerError as exc:
                return exc.message

        async def absent() -> str:
            return "absent"

        embedder, reranker, reasoner = await asyncio.gather(
            ping(self.embedder, "embedder"), ping(self.reranker, "reranker"),
            ping(self.reasoner, "reasoner") if self.reasoner is not None else absent())
        return {"embedder": embedder, "reranker": reranker, "reasoner": reasoner}

"""The FastAPI application: /v1/embeddings, /v1/rerank, /search, /v1/models, /healthz.

Built by :func:`create_api` around a :class:`~omniret.serving.backend.Backend`, so the Serve ingress
and a plain process serve the same routes. Every refusal is a JSON error in OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``: 4xx for the request's own faults (413 for a
body or work budget it exceeds), 5xx only for the service's (500 a model failure, 503 a replica that
is down, 504 a model call past ``serve.request_timeout_s``), logged with the traceback that never
goes to the client. Error bodies carry no server paths. Media parsing runs in worker threads, never
on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import os
import re
import tempfile
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from omniret.config import OmniretConfig
from omniret.errors import MediaError
from omniret.items import Item
from omniret.serving.api import (
    EmbeddingsRequest,
    IngestRequest,
    InputError,
    InputParser,
    RerankRequest,
    SearchRequest,
    encode_vector,
    search_item,
)
from omniret.serving.backend import Backend, ServerError
from omniret.serving.ingestion import save_uploads
from omniret.serving.ume import check_mode

log = logging.getLogger(__name__)

OPEN_PATHS = {"/healthz"}  # liveness probes carry no credentials


def error_body(message: str, param: str | None = None, kind: str = "invalid_request_error",
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes (413), by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._refuse(send)
        seen = 0
        refused = False

        async def counted() -> dict:
            # A chunked body has no Content-Length: count it as it streams, answer 413 once it passes
            # the limit, and tell the app the client left so it stops reading.
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                refused = True
                await self._refuse(send)
                return {"type": "http.disconnect"}
            return message

        async def guarded(message: dict) -> None:
            if not refused:  # the 413 is the only answer once the body was refused
                await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not refused:
                raise

    async def _refuse(self, send: Send) -> None:
        response = JSONResponse(error_body(f"request body exceeds {self.limit} bytes", "body",
                                           code="request_too_large"), status_code=413)
        await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> dict:
    return {"type": "http.disconnect"}


_PATH_RE = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][^\s/\\()'\"<>,;]+){2,}[/\\]?")


def public(text: str) -> str:
    """``text`` with server paths replaced by <file>: error bodies never show the server's layout."""
    return re.sub(r"\s*\(<file>\)", "", _PATH_RE.sub("<file>", text)) if text else text


def _param(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def hit_document(hit: dict) -> Item:
    """What the reranker sees of an indexed row: its stored thumbnail and text."""
    images = [hit["thumbnail"]] if hit.get("thumbnail") else []
    return Item(text=hit.get("text") or None, images=images, name=f"document {hit['id']}")


def hit_json(hit: dict, rerank_score: float | None = None) -> dict:
    thumb = hit.get("thumbnail")
    return {
        "id": hit["id"], "score": hit.get("score"), "rerank_score": rerank_score,
        "source_uri": hit.get("source_uri"), "modality": hit.get("modality"), "page": hit.get("page"),
        "t_start": hit.get("t_start"), "t_end": hit.get("t_end"), "text": (hit.get("text") or "")[:500],
        "thumbnail": f"data:image/jpeg;base64,{base64.b64encode(thumb).decode()}" if thumb else None,
    }


def create_api(backend: Backend, cfg: OmniretConfig, store: Any = None,
               on_request: Callable[[str, int], None] | None = None, ingestor: Any = None) -> FastAPI:
    """The HTTP application. ``store`` is an IndexStore (None: /search answers 503); ``ingestor``
    runs uploads through the ingest pipeline (None: /v1/ingest answers 503)."""
    serve_cfg = cfg.serve
    scratch = tempfile.mkdtemp(prefix="omniret-serve-")  # request temp files; each request deletes its own

    def parser() -> InputParser:
        return InputParser(serve_cfg, cfg.media, scratch)

    api_key = serve_cfg.api_key or os.environ.get("OMNIRET_API_KEY")
    app = FastAPI(title="omniret", version="1", description="Multimodal embeddings, reranking and search.")
    app.state.scratch = scratch

    @app.middleware("http")
    async def guard(request: Request, call_next):
        path = request.url.path
        if api_key and path not in OPEN_PATHS:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                response = JSONResponse(error_body("missing or wrong bearer token", "authorization",
                                                   "authentication_error"), status_code=401)
                _count(request, response.status_code)
                return response
        response = await call_next(request)
        _count(request, response.status_code)
        return response

    def _count(request: Request, status: int) -> None:
        if on_request is None:
            return
        # Label by route template, never by the raw path: clients choose paths (any characters, any
        # number of them), and metric tags must stay ASCII and few.
        route = getattr(request.scope.get("route"), "path", None)
        label = route or (request.url.path if request.url.path in known_paths else "unmatched")
        try:
            on_request(label, status)
        except Exception:  # metrics must never fail a request
            log.warning("could not count a request to %s", label, exc_info=True)

    @app.exception_handler(InputError)
    async def _input_error(_: Request, exc: InputError):
        return JSONResponse(error_body(public(exc.message), exc.param), status_code=exc.status)

    @app.exception_handler(MediaError)
    async def _media_error(_: Request, exc: MediaError):
        return JSONResponse(error_body(public(exc.reason), public(exc.source), code="unusable_input"),
                            status_code=400)

    @app.exception_handler(ServerError)
    async def _server_error(_: Request, exc: ServerError):
        return JSONResponse(error_body(exc.message, kind="server_error"), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        param = _param(tuple(first.get("loc", ())))
        return JSONResponse(error_body(f"{param}: {first.get('msg')}", param), status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        log.exception("unhandled error")
        return JSONResponse(error_body("internal error; see the server log", kind="server_error"), status_code=500)

    @app.get("/healthz")
    async def healthz():
        rows = await asyncio.to_thread(store.count) if store is not None and store.exists() else None
        health = getattr(backend, "health", None)
        replicas = await health() if health is not None else {}
        ok = all(state in ("ok", "absent") for state in replicas.values())
        body = {"status": "ok" if ok else "unhealthy", "model": backend.model_id, "dimensions": backend.dim,
                "index_rows": rows, "deployments": replicas}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def models() -> dict:
        entries = [(backend.model_id, "embedding"), (backend.rerank_model_id, "rerank")]
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "omniret", "task": task}
                                           for name, task in entries if name is not None]}

    @app.post("/v1/embeddings")
    async def embeddings(request: EmbeddingsRequest) -> dict:
        _check_model(request.model)
        check_mode(backend, request.mode)
        if request.dimensions is not None and request.dimensions > backend.dim:
            raise InputError("dimensions", f"at most {backend.dim}")
        with parser() as inputs:
            instruction = inputs.instruction(request.instruction, "instruction")
            # Decoding base64, probing headers and PDFs is blocking work: keep it off the event loop.
            items = await asyncio.to_thread(inputs.items, request.input, "input", instruction)
            if request.mode is not None:  # UME-R1 modes (omniret.serving.ume)
                vectors = (await backend.embed_mode(items, request.dimensions, request.mode, inputs.pixels)).unwrap()
            else:
                vectors = (await backend.embed(items, request.dimensions, inputs.pixels)).unwrap()
        tokens = sum(len((item.text or "").split()) for item in items)
        return {"object": "list", "model": backend.model_id,
                "data": [{"object": "embedding", "index": i, "embedding": encode_vector(v, request.encoding_format)}
                         for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.post("/v1/rerank")
    async def rerank(request: RerankRequest) -> dict:
        _check_model(request.model, backend.rerank_model_id)
        with parser() as inputs:
            instruction = inputs.instruction(request.instruction, "instruction")
            query = await asyncio.to_thread(inputs.item, request.query, "query", None)
            docs = await asyncio.to_thread(inputs.items, request.documents, "documents", None)
            scores = (await backend.rerank(query, docs, instruction, inputs.pixels)).unwrap()
        order = sorted(range(len(docs)), key=lambda i: -float(scores[i]))[: request.top_n or len(docs)]
        results = []
        for i in order:
            result: dict[str, Any] = {"index": i, "relevance_score": float(scores[i])}
            if request.return_documents:
                raw = request.documents[i]
                result["document"] = {"text": raw} if isinstance(raw, str) else raw.model_dump()
            results.append(result)
        return {"model": backend.rerank_model_id, "results": results}

    @app.post("/search")
    async def search(request: SearchRequest) -> dict:
        if store is None:
            raise InputError("index", "this service has no index configured", 503)
        if request.mode == "hybrid" and not request.text:
            raise InputError("text", "hybrid search needs text")
        with parser() as inputs:
            query = await asyncio.to_thread(search_item, request, inputs)
            vector = (await backend.embed([query], cfg.embed.dimensions, inputs.pixels)).unwrap()[0]
            depth = request.top_k
            if request.rerank:
                depth = min(max(request.rerank_top_n or request.top_k, request.top_k), serve_cfg.rerank_candidates)
            hits = await asyncio.to_thread(
                store.search, vector, request.text if request.mode == "hybrid" else None, k=depth,
                modality=request.modality, source_prefix=request.source_prefix, with_thumbnail=True)
            rerank_scores: list[float | None] = [None] * len(hits)
            if request.rerank and hits:
                scores = (await backend.rerank(query, [hit_document(h) for h in hits], query.instruction,
                                               inputs.pixels)).unwrap()
                order = sorted(range(len(hits)), key=lambda i: -float(scores[i]))
                hits = [hits[i] for i in order]
                rerank_scores = [float(scores[i]) for i in order]
        results = [hit_json(h, s) for h, s in zip(hits, rerank_scores, strict=True)][: request.top_k]
        return {"model": backend.model_id, "mode": request.mode, "reranked": request.rerank, "results": results}

    @app.post("/v1/ingest", status_code=202)
    async def ingest(request: IngestRequest) -> dict:
        if ingestor is None:
            raise InputError("files", "this service does not ingest uploads", 503)
        if len(request.files) > serve_cfg.max_inputs:
            raise InputError("files", f"at most {serve_cfg.max_inputs} files per request", 413)
        with parser() as inputs:
            paths = await asyncio.to_thread(save_uploads, request.files, inputs, serve_cfg.upload_dir)
        job_id = await asyncio.to_thread(ingestor.submit, paths)  # an actor call: off the event loop
        return {"job_id": job_id, "status": "running", "files": [p.name for p in paths]}

    @app.get("/v1/ingest/{job_id}")
    async def ingest_status(job_id: str) -> dict:
        if ingestor is None:
            raise InputError("job_id", "this service does not ingest uploads", 503)
        return await asyncio.to_thread(ingestor.status, job_id)

    def _check_model(name: str | None, served: str | None = None) -> None:
        served = served or backend.model_id
        if name and name != served:
            raise InputError("model", f"unknown model {name!r}; this endpoint serves {served!r}", 404)

    known_paths = {getattr(r, "path", "") for r in app.routes}
    app.add_middleware(BodyLimit, limit=serve_cfg.max_request_bytes)  # outermost: before any parsing
    return app

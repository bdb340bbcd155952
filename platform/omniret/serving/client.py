"""A small synchronous HTTP client of the omniret API (used by the Gradio app, scripts and tests).

Local files are sent as ``data:`` URIs, so the client needs no shared filesystem with the server.
"""

from __future__ import annotations

import base64
import mimetypes
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from omniret.errors import OmniretError


class ApiError(OmniretError):
    """A non-2xx answer, with the server's message and the field it named."""

    def __init__(self, status: int, message: str, param: str | None = None):
        self.status, self.message, self.param = status, message, param
        super().__init__(f"HTTP {status}: {message}" + (f" (field: {param})" if param else ""))


def file_uri(path: str | Path) -> str:
    path = Path(path)
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def decode_embedding(value: Any, encoding_format: str = "float", dim: int | None = None) -> np.ndarray:
    """One ``/v1/embeddings`` vector as numpy: float32 for float/base64, int8 for int8, and for binary the
    +-1 float32 vector of its ``dim`` bits (needed: the last byte is padded)."""
    from omniret.models.quantization import unpack_binary

    if encoding_format == "float":
        return np.asarray(value, dtype=np.float32)
    if encoding_format == "base64":
        return np.frombuffer(base64.b64decode(value), dtype="<f4").astype(np.float32)
    if encoding_format == "int8":
        return np.asarray(value, dtype=np.int8)
    if encoding_format == "binary":
        packed = np.frombuffer(base64.b64decode(value), dtype=np.uint8)
        dim = dim if dim is not None else 8 * len(packed)
        return unpack_binary(packed[None], dim)[0]
    raise ValueError(f"unknown encoding_format {encoding_format!r}")


class OmniretClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 300.0):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    def _call(self, method: str, path: str, **kwargs: Any) -> dict:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(0, f"cannot reach {self.http.base_url}: {exc}") from exc
        body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        if response.status_code >= 400:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            raise ApiError(response.status_code, error.get("message") or response.text[:300], error.get("param"))
        return body

    def health(self) -> dict:
        return self._call("GET", "/healthz")

    def search(self, text: str | None = None, image: str | Path | None = None, video: str | Path | None = None,
               pdf: str | Path | None = None, page: int = 0, *, top_k: int = 10, modality: list[str] | None = None,
               hybrid: bool = False, rerank: bool = False, rerank_top_n: int | None = None) -> dict:
        payload: dict[str, Any] = {"text": text or None, "top_k": top_k, "mode": "hybrid" if hybrid else "vector",
                                   "rerank": rerank, "modality": modality or None, "rerank_top_n": rerank_top_n}
        if image:
            payload["image"] = file_uri(image)
        if video:
            payload["video"] = {"url": file_uri(video)}
        if pdf:
            payload["pdf_page"] = {"url": file_uri(pdf), "page": page}
        return self._call("POST", "/search", json=payload)

    def embed(self, inputs: list[Any], dimensions: int | None = None) -> list[list[float]]:
        body = self._call("POST", "/v1/embeddings", json={"input": inputs, "dimensions": dimensions})
        return [d["embedding"] for d in body["data"]]

    def rerank(self, query: Any, documents: list[Any], top_n: int | None = None) -> list[dict]:
        return self._call("POST", "/v1/rerank", json={"query": query, "documents": documents, "top_n": top_n})[
            "results"]

    def ingest(self, paths: list[str | Path]) -> dict:
        files = [{"name": Path(p).name, "data": file_uri(p)} for p in paths]
        return self._call("POST", "/v1/ingest", json={"files": files})

    def ingest_status(self, job_id: str) -> dict:
        return self._call("GET", f"/v1/ingest/{job_id}")

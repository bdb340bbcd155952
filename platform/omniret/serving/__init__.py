"""Serving: the HTTP API (FastAPI) over Ray Serve deployments of the embedder and reranker."""

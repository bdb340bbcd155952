"""``omniret search``: query the ingested index from the command line, in this process.

The query is embedded with the configured model (the one the index was built with: the table
records it and a mismatch is refused), searched by vector or hybrid (vector + BM25, RRF), filtered by
modality and source prefix, optionally reordered by the yes/no reranker, and printed as a table or
as JSON. The same steps as the API's ``/search``, without a server.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from omniret.config import OmniretConfig
from omniret.errors import OmniretError
from omniret.items import Item


class SearchError(OmniretError):
    """A search that cannot run: no index, another model's index, an unreadable query."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-k", "--top-k", type=int, default=10, help="results to show")
    parser.add_argument("--hybrid", action="store_true", help="vector + BM25 over the rows' text, fused by RRF "
                        "(needs --text)")
    parser.add_argument("--multivector", action="store_true", help="MaxSim over the rows' K token vectors "
                        "(an index ingested with index.multivector=tokens) instead of the pooled vector")
    parser.add_argument("--rerank", action="store_true", help="reorder the candidates with the yes/no reranker")
    parser.add_argument("--rerank-top-n", type=int, help="candidates the reranker sees (default: serve."
                        "rerank_candidates, at least --top-k)")
    parser.add_argument("--modality", action="append", choices=["image", "page", "video"],
                        help="only rows of this modality (repeatable)")
    parser.add_argument("--source-prefix", help="only rows whose source path or URI starts with this")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def open_index(cfg: OmniretConfig):
    """The configured index, or a :class:`SearchError` that says how to make one."""
    from omniret.index.store import IndexStore

    uri = cfg.index.uri
    if "://" not in uri and not Path(uri).is_dir():
        raise SearchError(f"no index at {uri}: run `omniret ingest --source ...` first (or set index.uri)")
    store = IndexStore(cfg.index)
    if not store.exists():
        raise SearchError(f"no table {cfg.index.table!r} in {uri}: run `omniret ingest --source ...` first")
    return store


def check_model(cfg: OmniretConfig, store: Any) -> None:
    """Refuse to search an index built with another model: its vectors cannot be compared."""
    from omniret.index.schema import model_of
    from omniret.ingest.embed import model_tag

    have, want = model_of(store.table.schema), model_tag(cfg)
    if have is not None and have != want:
        raise SearchError(f"the index at {cfg.index.uri} holds vectors of model {have!r}, the configuration "
                          f"selects {want!r}: pass the model the index was built with (model.path=...)")


def check_query(query: Item, cfg: OmniretConfig) -> None:
    """Decode the query's pictures before any model loads, so an unreadable file fails at once."""
    from omniret.media.image import load_image

    if not query.modalities:
        raise SearchError("a search needs --text, --image, --video or --pdf")
    for image in query.images:
        load_image(image, max_bytes=cfg.media.max_file_bytes)
    for path in [query.video.path if query.video else None, query.page.path if query.page else None]:
        if path is not None and "://" not in str(path) and not Path(path).is_file():
            raise SearchError(f"{path}: no such file")


def query_multivector(cfg: OmniretConfig, store: Any) -> tuple[int, str]:
    """(K, source) of the index's multivector column: queries are read out as its rows were."""
    from omniret.index.schema import MULTIVECTOR, multivector_of

    spec = multivector_of(store.table.schema)
    if spec is None:
        raise SearchError(f"the index at {cfg.index.uri} has no {MULTIVECTOR!r} column: ingest with "
                          "index.multivector=tokens (into a new index.table) to search it with --multivector")
    return spec


def search(cfg: OmniretConfig, query: Item, *, top_k: int = 10, hybrid: bool = False, rerank: bool = False,
           rerank_top_n: int | None = None, modality: list[str] | None = None,
           source_prefix: str | None = None, multivector: bool = False) -> list[dict]:
    """The ``top_k`` hits for ``query``: dicts of the row's light columns, ``score`` and ``rerank_score``."""
    from omniret.models.embedder import Embedder

    if hybrid and not query.text:
        raise SearchError("--hybrid needs --text (BM25 ranks the rows' text against it)")
    check_query(query, cfg)
    store = open_index(cfg)
    check_model(cfg, store)
    spec = query_multivector(cfg, store) if multivector else None
    vectors = Embedder.from_config(cfg).encode([query], progress=False, multivector=spec)[0]
    # The pooled vector, or the K token states read out as the table's rows were.
    vector, tokens = (vectors, None) if spec is None else (None, vectors[1:])
    depth = top_k
    if rerank:
        depth = min(max(rerank_top_n or top_k, top_k), cfg.serve.rerank_candidates)
    hits = store.search(vector, query.text if hybrid else None, multivector=tokens, k=depth, modality=modality,
                        source_prefix=source_prefix, with_thumbnail=rerank)
    for hit in hits:
        hit["rerank_score"] = None
    if rerank and hits:
        from omniret.models.reranker import Reranker
        from omniret.serving.routes import hit_document

        scores = Reranker.from_config(cfg).score(query, [hit_document(h) for h in hits])
        for hit, score in zip(hits, scores.tolist(), strict=True):
            hit["rerank_score"] = float(score)
        hits.sort(key=lambda h: -h["rerank_score"])
    for hit in hits:
        hit.pop("thumbnail", None)
    return hits[:top_k]


def format_hits(hits: list[dict]) -> str:
    """A plain table: rank, score(s), modality, where (file, page or clip) and the start of the text."""
    if not hits:
        return "no results"
    reranked = any(h.get("rerank_score") is not None for h in hits)
    lines = [f"{'#':>3}  {'score':>8}" + (f"  {'rerank':>8}" if reranked else "") + f"  {'modality':<8}  source"]
    for rank, hit in enumerate(hits, start=1):
        where = str(hit.get("source_uri"))
        if hit.get("page") is not None:
            where += f"  p.{hit['page'] + 1}"
        elif hit.get("t_start") is not None and hit.get("t_end") is not None and hit["t_end"] > 0:
            where += f"  {hit['t_start']:.1f}-{hit['t_end']:.1f} s"
        text = " ".join((hit.get("text") or "").split())[:60]
        lines.append(f"{rank:>3}  {hit['score']:>8.4f}" + (f"  {hit['rerank_score']:>8.4f}" if reranked else "")
                     + f"  {hit.get('modality') or '':<8}  {where}" + (f"  {text}" if text else ""))
    return "\n".join(lines)


def run(args: argparse.Namespace, cfg: OmniretConfig, query: Item) -> int:
    hits = search(cfg, query, top_k=args.top_k, hybrid=args.hybrid, rerank=args.rerank,
                  rerank_top_n=args.rerank_top_n, modality=args.modality, source_prefix=args.source_prefix,
                  multivector=args.multivector)
    if args.json:
        print(json.dumps({"query": query.text, "mode": "hybrid" if args.hybrid else "vector",
                          "multivector": args.multivector,
                          "reranked": args.rerank, "results": [_jsonable(h) for h in hits]}, indent=2))
    else:
        print(format_hits(hits))
    return 0


def _jsonable(hit: dict) -> dict:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in hit.items() if not isinstance(v, bytes)}

"""Vector search at scale: recall@10 and latency of LanceDB's ANN indexes against exact search, same run.

Run: .venv/bin/python bench/index_bench.py [--rows 1000000] [--dims 64 512] [--queries 200]

For each dimension, a fresh table (in a temporary folder, removed afterwards) is filled with clustered
synthetic unit vectors, written in chunks so that memory stays bounded: the full float matrix is never
held. The exact top-10 of every query is kept up to date chunk by chunk (numpy, float32), so the
ground truth needs no second pass. Then, through ``IndexStore.search`` one query at a time (warm):
LanceDB's exact flat scan, and each index kind with and without rescoring:

- ``ivf_pq``: product quantisation (the project's default index and code size);
- ``ivf_sq``: scalar quantisation, one int8 per dimension;
- ``ivf_rq``: RaBitQ, one bit per dimension (binary codes with a distance estimate);
- ``hnsw_sq``: IVF_HNSW_SQ (opt-in: its graph build takes many minutes at 1M rows on few cores).

Rescoring (``refine_factor`` r) fetches r x k candidates by the quantised distance and re-ranks them
by the exact float distance.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import statistics
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
from lancedb.index import HnswSq, IvfPq, IvfRq, IvfSq
from report import snapshot, write_section  # bench/ is on sys.path when a bench script runs

from omniret.config import IndexConfig
from omniret.index.schema import items_schema
from omniret.index.store import IndexStore, sub_vectors

K = 10


def clustered(rng: np.random.Generator, centers: np.ndarray, n: int, spread: float) -> np.ndarray:
    """Unit vectors scattered around randomly chosen centres (real embeddings are clustered too)."""
    picks = centers[rng.integers(0, len(centers), n)]
    # Noise of norm ~spread around unit centres: neighbours are mostly, not only, in one's cluster.
    v = picks + rng.normal(scale=spread / np.sqrt(centers.shape[1]), size=picks.shape).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class TopK:
    """Running exact top-k (by inner product) of each query over chunks of rows."""

    def __init__(self, queries: np.ndarray, k: int = K):
        self.queries, self.k = queries, k
        self.scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        self.ids = np.full((len(queries), k), -1, dtype=np.int64)

    def update(self, chunk: np.ndarray, first_id: int) -> None:
        scores = self.queries @ chunk.T  # (queries, chunk)
        k = min(self.k, scores.shape[1])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        all_scores = np.concatenate([self.scores, np.take_along_axis(scores, top, 1)], axis=1)
        all_ids = np.concatenate([self.ids, top + first_id], axis=1)
        keep = np.argsort(-all_scores, axis=1, kind="stable")[:, : self.k]
        self.scores, self.ids = np.take_along_axis(all_scores, keep, 1), np.take_along_axis(all_ids, keep, 1)

    def sets(self) -> list[set[int]]:
        return [set(row.tolist()) for row in self.ids]


def fill_table(store: IndexStore, n: int, dim: int, centers: np.ndarray, truth: TopK, seed: int,
               chunk: int = 50_000) -> None:
    """Write n vectors in chunks, updating the exact top-k as each chunk goes by."""
    rng = np.random.default_rng(seed)
    schema = items_schema(dim, "synthetic")
    store.create(dim, "synthetic")
    now = dt.datetime.now(dt.timezone.utc)
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        vectors = clustered(rng, centers, size, 0.35)
        truth.update(vectors, start)
        ids = pa.array([f"{i:064x}:image" for i in range(start, start + size)])
        store.table.add(pa.table({
            "id": ids, "source_uri": pa.array([f"/synthetic/{i}" for i in range(start, start + size)]),
            "sha256": pa.array([f"{i:064x}" for i in range(start, start + size)]),
            "modality": pa.array(["image"] * size), "page": pa.nulls(size, pa.int32()),
            "t_start": pa.nulls(size, pa.float64()), "t_end": pa.nulls(size, pa.float64()),
            "text": pa.nulls(size, pa.string()), "thumbnail": pa.nulls(size, pa.binary()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
            "model": pa.array(["synthetic"] * size),
            "created_at": pa.array([now] * size, pa.timestamp("us", tz="UTC"))}, schema=schema))
        del vectors


def measure(store: IndexStore, queries: np.ndarray, truth: list[set[int]], **kwargs) -> tuple[float, float, float]:
    """(recall@10, median ms, p95 ms) of store.search over the queries."""
    store.search(queries[0], k=K, **kwargs)  # warm-up: opens files, loads the index
    times, hits = [], 0
    for q, expected in zip(queries, truth, strict=True):
        t0 = time.perf_counter()
        result = store.search(q, k=K, **kwargs)
        times.append((time.perf_counter() - t0) * 1000)
        hits += len({int(h["id"].split(":")[0], 16) for h in result} & expected)
    return hits / (K * len(queries)), statistics.median(times), float(np.percentile(times, 95))


def variants(kind: str, dim: int, parts: int) -> tuple[str, object, list[tuple[str, dict]]]:
    """(index label, LanceDB index config, [(query label, search knobs)]) of one index kind."""
    plain, refine = ("no rescoring", {"refine_factor": 0}), ("rescore x10", {"refine_factor": 10})
    if kind == "ivf_pq":
        sub = sub_vectors(dim)
        return (f"IVF_PQ, {sub} sub-vectors x 8 bit ({sub} B/vector)",
                IvfPq(distance_type="cosine", num_partitions=parts, num_sub_vectors=sub),
                [plain, refine, ("nprobes 10, rescore x10", {"refine_factor": 10, "nprobes": 10})])
    if kind == "ivf_sq":
        return (f"IVF_SQ, int8 ({dim} B/vector)", IvfSq(distance_type="cosine", num_partitions=parts),
                [plain, refine, ("nprobes 10, rescore x10", {"refine_factor": 10, "nprobes": 10})])
    if kind == "ivf_rq":
        return (f"IVF_RQ, 1 bit ({dim // 8} B/vector)", IvfRq(distance_type="cosine", num_partitions=parts,
                                                               num_bits=1),
                [plain, refine, ("rescore x40", {"refine_factor": 40}),
                 ("nprobes 10, rescore x40", {"refine_factor": 40, "nprobes": 10})])
    if kind == "hnsw_sq":
        return ("IVF_HNSW_SQ, int8", HnswSq(distance_type="cosine", num_partitions=max(1, parts // 256)),
                [plain, refine])
    raise ValueError(f"unknown index kind {kind!r}")


def bench_dim(args, dim: int, rows: list[str]) -> None:
    rng = np.random.default_rng(7 + dim)
    centers = rng.normal(size=(1000, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    queries = clustered(rng, centers, args.queries, 0.35)
    parts = max(1, args.rows // args.rows_per_partition)
    with tempfile.TemporaryDirectory(prefix="omniret-index-bench-", dir=args.tmp) as tmp:
        store = IndexStore(IndexConfig(uri=tmp, vector_index_min_rows=256), fresh=True)
        top = TopK(queries)
        t0 = time.perf_counter()
        fill_table(store, args.rows, dim, centers, top, seed=dim)
        truth = top.sets()
        print(f"{args.rows:,} x {dim} written in {time.perf_counter() - t0:.1f} s", flush=True)
        n = args.exact_queries
        recall, med, p95 = measure(store, queries[:n], truth[:n], exact=True)
        rows.append(f"| {dim} | exact flat scan (float32, {4 * dim} B/vector) | - | - | {recall:.3f} | "
                    f"{med:.1f} | {p95:.1f} |")
        print(rows[-1], flush=True)
        for kind in args.kinds:
            label, config, knobs = variants(kind, dim, parts)
            t0 = time.perf_counter()
            store.table.create_index("vector", config=config, replace=True)
            build = time.perf_counter() - t0
            for query_label, kw in knobs:
                recall, med, p95 = measure(store, queries, truth, nprobes=kw.get("nprobes", args.nprobes),
                                           refine_factor=kw["refine_factor"])
                rows.append(f"| {dim} | {label}, {parts} partitions | {query_label} | {build:.0f} | {recall:.3f} | "
                            f"{med:.1f} | {p95:.1f} |")
                print(rows[-1], flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--exact-queries", type=int, default=20, help="queries timed on the exact scan (slow)")
    parser.add_argument("--kinds", nargs="+", default=["ivf_pq", "ivf_sq", "ivf_rq"],
                        choices=["ivf_pq", "ivf_sq", "ivf_rq", "hnsw_sq"])
    parser.add_argument("--rows-per-partition", type=int, default=4096, help="IVF partitions = rows / this")
    parser.add_argument("--nprobes", type=int, default=20, help="partitions searched unless a row says otherwise")
    parser.add_argument("--tmp", default=None, help="folder for the temporary tables (default: the system's)")
    parser.add_argument("--title", default="Vector search at scale")
    args = parser.parse_args(argv)
    before = snapshot()
    rows = ["| dim | index | query | build s | recall@10 | p50 ms | p95 ms |",
            "| ---: | --- | --- | ---: | ---: | ---: | ---: |"]
    for dim in args.dims:
        bench_dim(args, dim, rows)
    body = (f"{args.rows:,} synthetic clustered unit vectors per dimension (1000 Gaussian clusters, noise of norm "
            f"0.35), cosine distance; {args.queries} queries from the same distribution; recall@10 against the "
            "exact top-10 computed with numpy in the same run. Latency: one query at a time through "
            f"`IndexStore.search` (light columns returned), warm; the exact scan is timed on the first "
            f"{args.exact_queries} queries. IVF partitions: rows / {args.rows_per_partition}; {args.nprobes} "
            "partitions searched unless the row says otherwise. Rescore x r: r x 10 candidates re-ranked by "
            "the float vectors.\n\n" + "\n".join(rows))
    print(body, flush=True)
    command = "python " + shlex.join(["bench/index_bench.py", *(argv if argv is not None else sys.argv[1:])])
    write_section(args.title, command, body, before=before)


if __name__ == "__main__":
    main()

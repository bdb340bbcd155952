"""Ingestion throughput (Ray Data pipeline vs one process) and ANN search quality/latency vs exact search.

Run: .venv/bin/python bench/ingest_bench.py [--sizes 100000 1000000] [--dim 64] [--queries 100]

Part 1 ingests the same generated mixed corpus (images, PDF pages, video clips) twice into fresh
tables: through the Ray Data graph (``run_ingest``), and through a plain loop that calls the same
stage functions one after another in this process. Both include decoding, the model load, the
embedding, the writes and index maintenance; Ray's own start-up is measured separately.

Part 2 fills a table with clustered synthetic unit vectors, takes exact top-10 neighbours from
numpy as ground truth, then measures recall@10 and per-query latency of LanceDB's exact (flat)
search and of ANN indexes, through ``IndexStore.search``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from report import write_section  # bench/ is on sys.path when a bench script runs

from omniret.config import IndexConfig, load_config
from omniret.index.schema import items_schema
from omniret.index.store import IndexStore, sub_vectors
from omniret.media import synth

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


# ---- part 1: ingestion ---------------------------------------------------------------------------
def write_corpus(root: Path, images: int, pdfs: int, videos: int) -> int:
    """A mixed corpus; returns how many items (images + pages + clips) it holds."""
    colors, shapes = list(synth.COLORS), list(synth.SHAPES)
    for i in range(images):
        # Position and size vary with i, so no two images share bytes (and ids).
        synth.draw_scene([{"shape": shapes[i % 3], "color": colors[i % len(colors)], "x": 40 + i % 48,
                           "y": 40 + (i // 48) * 6, "size": 30 + i % 7}], size=(128, 128)).save(root / f"img{i:03d}.png")
    for i in range(pdfs):
        synth.write_pdf(root / f"doc{i}.pdf", [f"document {i} page {p}: {colors[p % len(colors)]} shapes"
                                               for p in range(4)])
    for i in range(videos):
        synth.write_moving_video(root / f"vid{i}.mp4", shape=shapes[i % 3], color=colors[i % len(colors)],
                                 direction=synth.DIRECTIONS[i % 4], num_frames=32, size=(112, 112), fps=8)
    return images + 4 * pdfs + 2 * videos  # 4 s videos in 2 s clips


def plain_loop(cfg, root: Path) -> int:
    """The same stages, called one after another in this process; returns items written."""
    from omniret.ingest.embed import EmbedBatch, model_dim, model_tag
    from omniret.ingest.expand import expand_files
    from omniret.ingest.write import WriteBatch

    store = IndexStore(cfg.index, fresh=True)
    store.create(model_dim(cfg), model_tag(cfg))
    files = sorted(p for p in root.iterdir() if p.is_file())
    embed, write = EmbedBatch(cfg.model_dump(), model_tag(cfg)), WriteBatch(cfg.index.model_dump())
    written = 0
    for start in range(0, len(files), cfg.ingest.files_per_task):
        part = files[start : start + cfg.ingest.files_per_task]
        batch = pa.table({"uri": [str(p) for p in part], "size": [p.stat().st_size for p in part]})
        work = pa.concat_tables(expand_files(batch, media=cfg.media.model_dump(), index=cfg.index.model_dump(),
                                             thumbnail_px=cfg.ingest.thumbnail_px))
        result = write(embed(work))
        written += result["status"].to_pylist().count("written")
    store.maintain()
    return written


def bench_ingest(args) -> str:
    import ray

    from omniret.ingest.pipeline import run_ingest

    overrides = ["media.clip_seconds=2.0", "embed.progress=false", *args.overrides]
    rows = ["| path | items | seconds | items/s | vs plain loop |", "| --- | ---: | ---: | ---: | ---: |"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "corpus"
        root.mkdir()
        items = write_corpus(root, args.images, args.pdfs, args.videos)
        started = time.perf_counter()
        ray.init(address="local", num_cpus=args.ray_cpus, include_dashboard=False)
        ray_start = time.perf_counter() - started
        loop_times, ray_times = [], []
        for run in range(args.repeats):
            cfg = load_config(None, [*overrides, f"index.uri={tmp}/loop{run}"])
            t0 = time.perf_counter()
            assert plain_loop(cfg, root) == items
            loop_times.append(time.perf_counter() - t0)
            cfg = load_config(None, [*overrides, f"index.uri={tmp}/ray{run}"])
            t0 = time.perf_counter()
            summary = run_ingest(cfg, [str(root)])
            ray_times.append(time.perf_counter() - t0)
            assert summary.items_written == items, summary.format()
            print(f"run {run}: loop {loop_times[-1]:.1f} s, ray data {ray_times[-1]:.1f} s", flush=True)
        ray.shutdown()
    loop_s, ray_s = statistics.median(loop_times), statistics.median(ray_times)
    rows.append(f"| plain loop, one process | {items} | {loop_s:.1f} | {items / loop_s:.1f} | 1.00x |")
    rows.append(f"| Ray Data graph ({args.ray_cpus} CPUs, 1 embedder actor) | {items} | {ray_s:.1f} | "
                f"{items / ray_s:.1f} | {loop_s / ray_s:.2f}x |")
    return (f"Corpus: {args.images} PNG images 128 px, {args.pdfs} PDFs x 4 pages at 100 dpi, {args.videos} "
            f"videos of 4 s in 2 s clips (8 frames each): {items} items. Tiny qwen2_vl model, fp32 on CPU. Both "
            "paths decode, embed (token-budget batches), write to a fresh LanceDB table and build its "
            f"scalar/full-text indexes; median of {args.repeats} runs, model load included. Starting the local "
            f"Ray instance (not included) took {ray_start:.1f} s.\n\n" + "\n".join(rows))


# ---- part 2: vector search -----------------------------------------------------------------------
def clustered(rng: np.random.Generator, centers: np.ndarray, n: int, spread: float) -> np.ndarray:
    """Unit vectors scattered around randomly chosen centres (real embeddings are clustered too)."""
    picks = centers[rng.integers(0, len(centers), n)]
    # Noise of norm ~spread around unit centres: neighbours are mostly, not only, in one's cluster.
    v = picks + rng.normal(scale=spread / np.sqrt(centers.shape[1]), size=picks.shape).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def fill_table(store: IndexStore, n: int, dim: int, centers: np.ndarray, seed: int, chunk: int = 200_000
               ) -> np.ndarray:
    """Write n vectors in chunks (memory stays bounded); returns them for the ground truth."""
    rng = np.random.default_rng(seed)
    schema = items_schema(dim, "synthetic")
    store.create(dim, "synthetic")
    out = np.empty((n, dim), dtype=np.float32)
    now = dt.datetime.now(dt.timezone.utc)
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        vectors = clustered(rng, centers, size, 0.35)
        out[start : start + size] = vectors
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
    return out


def exact_top10(data: np.ndarray, queries: np.ndarray) -> list[set[int]]:
    scores = queries @ data.T if len(data) <= 200_000 else None
    out = []
    for i, q in enumerate(queries):
        s = scores[i] if scores is not None else data @ q
        out.append(set(np.argpartition(-s, 10)[:10].tolist()))
    return out


def measure(store: IndexStore, queries: np.ndarray, truth: list[set[int]], **kwargs) -> tuple[float, float, float]:
    """(recall@10, median ms, p95 ms) of store.search over the queries."""
    store.search(queries[0], k=10, **kwargs)  # warm-up: opens files, loads the index
    times, hits = [], 0
    for q, expected in zip(queries, truth, strict=True):
        t0 = time.perf_counter()
        result = store.search(q, k=10, **kwargs)
        times.append((time.perf_counter() - t0) * 1000)
        hits += len({int(h["id"].split(":")[0], 16) for h in result} & expected)
    return hits / (10 * len(queries)), statistics.median(times), float(np.percentile(times, 95))


def index_variants(kind: str, dim: int) -> list[tuple[str, dict, list[tuple[str, dict]]]]:
    """(index label, config fields, [(query label, search knobs)]) to build and measure, per kind."""
    refine = [("no refine", {"refine_factor": 0}), ("refine x10 (default)", {})]
    if kind == "hnsw_sq":
        return [("IVF_HNSW_SQ", {}, refine)]
    return [(f"IVF_PQ, {sub_vectors(dim)} sub-vectors (default)", {}, [*refine, ("nprobes=64, refine x10",
                                                                               {"nprobes": 64})]),
            (f"IVF_PQ, {dim // 8} sub-vectors (dim/8)", {"num_sub_vectors": dim // 8},
             [("refine x10", {})])]


def bench_vectors(args) -> str:
    skipped = (f" IVF_HNSW_SQ was built only up to {args.hnsw_max_rows:,} rows: its build is slow on this "
               "machine." if "hnsw_sq" in args.index_types and max(args.sizes) > args.hnsw_max_rows else "")
    rows = ["| rows | index, query | build s | recall@10 | median ms | p95 ms |",
            "| ---: | --- | ---: | ---: | ---: | ---: |"]
    rng = np.random.default_rng(7)
    centers = rng.normal(size=(1000, args.dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    queries = clustered(rng, centers, args.queries, 0.35)
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            store = IndexStore(IndexConfig(uri=tmp, vector_index_min_rows=256), fresh=True)
            t0 = time.perf_counter()
            truth = exact_top10(fill_table(store, n, args.dim, centers, seed=n), queries)
            print(f"{n:,} rows written in {time.perf_counter() - t0:.1f} s", flush=True)
            recall, med, p95 = measure(store, queries[: args.exact_queries], truth[: args.exact_queries], exact=True)
            rows.append(f"| {n:,} | none: exact flat scan | - | {recall:.3f} | {med:.1f} | {p95:.1f} |")
            print(rows[-1], flush=True)
            for kind in args.index_types:
                if kind == "hnsw_sq" and n > args.hnsw_max_rows:
                    continue
                for label, fields, queries_knobs in index_variants(kind, args.dim):
                    store.cfg = IndexConfig(uri=tmp, vector_index=kind, nprobes=20, **fields)
                    config = store.vector_index_config(n)
                    t0 = time.perf_counter()
                    store.table.create_index("vector", config=config, replace=True)
                    build = time.perf_counter() - t0
                    for query_label, knobs in queries_knobs:
                        recall, med, p95 = measure(store, queries, truth, **knobs)
                        rows.append(f"| {n:,} | {label}, {config.num_partitions} partitions; {query_label} | "
                                    f"{build:.1f} | {recall:.3f} | {med:.1f} | {p95:.1f} |")
                        print(rows[-1], flush=True)
    return (f"Synthetic clustered unit vectors, dimension {args.dim} (1000 Gaussian clusters, noise of norm 0.35), "
            f"cosine distance; {args.queries} queries from the same distribution (exact search: the first "
            f"{args.exact_queries}); ground truth from numpy. Latency: one query at a time through "
            "`IndexStore.search` (light columns returned), warm, nprobes=20 unless noted. Partitions: rows/4096 "
            "(IVF_PQ), rows/1M (IVF_HNSW_SQ). Refine re-ranks refine_factor x k ANN candidates by exact "
            f"distance.{skipped}\n\n" + "\n".join(rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--pdfs", type=int, default=8)
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--exact-queries", type=int, default=50)
    parser.add_argument("--index-types", nargs="+", default=["ivf_pq", "hnsw_sq"], choices=["ivf_pq", "hnsw_sq"])
    parser.add_argument("--hnsw-max-rows", type=int, default=100_000,
                        help="skip IVF_HNSW_SQ above this many rows (its build is slow on few cores)")
    parser.add_argument("--title", default="Ingestion and vector search",
                        help="section of docs/BENCHMARKS.md to (re)write")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-vectors", action="store_true")
    parser.add_argument("overrides", nargs="*", help="config overrides for the ingest part")
    args = parser.parse_args(argv)
    parts = []
    if not args.skip_ingest:
        parts.append("### Ingest throughput\n\n" + bench_ingest(args))
        print(parts[-1], flush=True)
    if not args.skip_vectors:
        parts.append("### Vector search: ANN vs exact\n\n" + bench_vectors(args))
        print(parts[-1], flush=True)
    command = "python " + shlex.join(["bench/ingest_bench.py", *(argv if argv is not None else sys.argv[1:])])
    write_section(args.title, command, "\n\n".join(parts))


if __name__ == "__main__":
    main()

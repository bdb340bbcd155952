"""Single-vector vs multi-vector (MaxSim) search on the generated benchmark's visual-document and video tasks.

Run (after `omniret generate --out .omniret/benchmark`):
    python bench/multivector_bench.py [--bench .omniret/benchmark] [--k 8] [--source segments] [overrides ...]

Each task's candidates are embedded once with the pooled vector and K token states from the same
forward pass (omniret.models.multivector), and written to two LanceDB tables: one with the vector
column only, one with the vector and the multivector column. Every query is then searched in both
through IndexStore.search: the pooled vector (cosine) against the first, its K states (MaxSim) against
the second. A global task (syn_docs) ranks the whole pool; a task with candidate lists (syn_t2v) ranks
each query's own list (an `id IN (...)` prefilter). Quality is hit@1 and nDCG@5 (linear gain); size is
the table folder on disk; latency is the search call alone (the query's embedding is the same forward
pass for both), flat search (tables this small get no ANN index).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml
from report import write_section  # bench/ is on sys.path when a bench script runs

from omniret.config import IndexConfig, load_config
from omniret.eval.metrics import query_metrics
from omniret.eval.mmeb import load_datasets
from omniret.index.schema import MULTIVECTOR, items_schema
from omniret.index.store import IndexStore, in_list
from omniret.models.embedder import Embedder

TASKS = ("syn_docs", "syn_t2v")


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def build(root: Path, name: str, vectors: np.ndarray, spec: tuple[int, str] | None) -> IndexStore:
    """A table of the candidates: rows c0..cN with the pooled vector, and the K states when ``spec``."""
    dim = vectors.shape[-1]
    schema = items_schema(dim, "bench", spec)
    columns = {"id": [f"c{i}" for i in range(len(vectors))], "source_uri": [f"/c{i}" for i in range(len(vectors))],
               "sha256": ["0" * 64] * len(vectors), "modality": ["page"] * len(vectors),
               "vector": [v[0].tolist() for v in vectors], "model": ["bench"] * len(vectors),
               "created_at": pa.array([0] * len(vectors), pa.int64()).cast(pa.timestamp("us")).cast(
                   pa.timestamp("us", tz="UTC"))}
    if spec is not None:
        columns[MULTIVECTOR] = [v[1:].tolist() for v in vectors]
    store = IndexStore(IndexConfig(uri=str(root / name), read_consistency_s=None))
    store.create(dim, "bench", spec)
    store.upsert(pa.table({c: columns.get(c, pa.nulls(len(vectors), schema.field(c).type)) for c in schema.names},
                          schema=schema))
    store.table.optimize()  # one compacted version, as a maintained index would be
    return store


def evaluate(store: IndexStore, queries: np.ndarray, ds, multi: bool, repeats: int) -> tuple[dict, list[float]]:
    """Mean hit@1 / nDCG@5 over the queries and the latency of every search call (ms)."""
    hit, ndcg, latency = [], [], []
    for q, query in enumerate(queries):
        pool = ds.lists[q] if ds.lists is not None else list(range(len(ds.candidates)))
        where = in_list("id", [f"c{i}" for i in pool]) if ds.lists is not None else None
        kwargs = {"multivector": query[1:]} if multi else {"vector": query[0]}
        for _ in range(repeats):
            start = time.perf_counter()
            hits = store.search(**kwargs, k=len(pool), where=where)
            latency.append((time.perf_counter() - start) * 1000)
        score = {int(h["id"][1:]): h["score"] for h in hits}
        metrics = query_metrics([score[i] for i in pool], [ds.qrels[q].get(i, 0.0) for i in pool], ks=(1, 5))
        hit.append(metrics["hit@1"])
        ndcg.append(metrics["ndcg_linear@5"])
    return {"hit@1": float(np.mean(hit)), "ndcg@5": float(np.mean(ndcg))}, latency


def describe_model(path: str | None, cfg) -> str:
    """The model in words: the training run's own record when ``path`` is a run's ``final`` folder."""
    if not path:
        return f"the untrained tiny {cfg.model.tiny_family} ({cfg.model.tiny_preset} preset)"
    record = Path(path).parent / "config.yaml"
    if not record.is_file():
        return f"`{path}`"
    run = yaml.safe_load(record.read_text())
    train, base = run["train"], run["model"]
    data = ", ".join(Path(p).name for p in run["data"]["train"])
    return (f"`{path}`: the tiny {base['tiny_family']} ({base['tiny_preset']} preset) trained by stage "
            f"`{train['name']}`, {train['max_steps']} steps of batch {train['batch_size']}, lr {train['lr']}, "
            f"{run['loss']['name']} at temperature {run['loss']['temperature']}, on `{data}` "
            "(the training command: docs/RECIPES.md, Multi-vector search)")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", default=".omniret/benchmark", help="a generated benchmark (omniret generate)")
    parser.add_argument("--k", type=int, default=8, help="vectors per item (index.multivector_k)")
    parser.add_argument("--source", default="segments", choices=["segments", "last"])
    parser.add_argument("--repeats", type=int, default=3, help="timed searches per query and mode")
    parser.add_argument("--no-instructions", action="store_true",
                        help="embed without the benchmark's instructions, as ingest and `omniret search` do")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model.path=.omniret/runs/x/final")
    args = parser.parse_args(argv)
    cfg = load_config(None, ["embed.progress=false", f"eval.root={Path(args.bench) / 'eval'}",
                             f"eval.datasets=[{','.join(TASKS)}]", *args.overrides])
    datasets, skipped = load_datasets(cfg.eval)
    if skipped:
        raise SystemExit(f"cannot read {skipped}: generate the benchmark with `omniret generate --out {args.bench}`")
    embedder = Embedder.from_config(cfg)
    spec = (args.k, args.source)
    load_before = os.getloadavg()[0]
    rows = ["| task | queries | candidates | mode | hit@1 | nDCG@5 | table on disk | per row | search p50 | search p95 |",
            "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    with tempfile.TemporaryDirectory() as tmp:
        for ds in datasets:
            def items(sides):
                return [replace(s, instruction=None) if args.no_instructions else s for s in sides]

            candidates = embedder.encode([s.to_item(name=f"c{i}") for i, s in enumerate(items(ds.candidates))],
                                         multivector=spec)
            queries = embedder.encode([s.to_item(name=f"q{i}") for i, s in enumerate(items(ds.queries))],
                                      multivector=spec)
            for mode, table_spec in (("single vector (cosine)", None), (f"multi-vector K={args.k} (MaxSim)", spec)):
                store = build(Path(tmp) / ds.name, mode.split()[0], candidates, table_spec)
                size = folder_bytes(Path(store.cfg.uri))
                quality, latency = evaluate(store, queries, ds, table_spec is not None, args.repeats)
                rows.append(f"| {ds.name} | {len(ds.queries)} | {len(ds.candidates)} | {mode} | "
                            f"{quality['hit@1']:.3f} | {quality['ndcg@5']:.3f} | {size / 1024:.0f} KiB | "
                            f"{size / len(ds.candidates):.0f} B | {percentile(latency, 50):.1f} ms | "
                            f"{percentile(latency, 95):.1f} ms |")
                print(rows[-1], flush=True)
    load_after = os.getloadavg()[0]
    model = describe_model(cfg.model.path, cfg)
    dim = candidates.shape[-1]
    body = (f"Model: {model}; {dim}-d vectors, fp32 on CPU. Multi-vector: K={args.k} token states per item "
            f"(`index.multivector_source={args.source}`) from the same forward pass as the pooled vector; the "
            "model was trained for the pooled vector only. Candidates and queries as the generated benchmark "
            f"writes them ({'without' if args.no_instructions else 'with'} instructions); syn_docs ranks its whole page pool, syn_t2v each query's own "
            "candidate list. Flat (exact) search through `IndexStore.search`; latency is the search call alone, "
            f"{args.repeats} timed calls per query. Conditions: a 2-core machine shared by about 8 concurrent "
            f"jobs (1-min load average {load_before:.1f} at the start, {load_after:.1f} at the end), so latencies "
            "are upper bounds.\n\n" + "\n".join(rows))
    command = (f"python bench/multivector_bench.py --bench {args.bench} --k {args.k} --source {args.source}"
               + (" --no-instructions" if args.no_instructions else "") + "".join(f" {o}" for o in args.overrides))
    print(body)
    if not args.no_write:
        write_section("Multi-vector (MaxSim) vs single-vector search (generated benchmark)", command, body)


if __name__ == "__main__":
    main()

"""The one-command demo: corpus -> model -> ingest -> Ray Serve API + Gradio app on 127.0.0.1.

1. Generate the demo corpus (pictures, clips, PDF pages from the benchmark's generator, held out
   from training) and its queries with their right answers under ``--workdir``.
2. Pick the model: ``model.path`` if set; otherwise the demo model (ray_jobs/configs/demo.yaml),
   trained on the generated benchmark the first time (minutes on a CPU), or, with ``--fast``, the
   untrained tiny model.
3. Ingest the corpus into LanceDB with Ray Data (idempotent: a re-run embeds nothing new).
4. Serve /v1/embeddings, /v1/rerank and /search with Ray Serve and open the Gradio app; run every
   demo query through the API and print precision@1 (the first result is the right file and page),
   with the reranker as well when a trained one is configured (the demo recipe trains one after the
   embedder); stop cleanly on Ctrl-C.

Everything is reused on the next run: corpus, benchmark, trained checkpoint and index.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from omniret.config import OmniretConfig, apply_overrides

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
DEMO_RECIPE = REPO / "ray_jobs" / "configs" / "demo.yaml"


def demo_corpus(workdir: Path) -> list[str]:
    """The corpus's media files (generated on the first run; its corpus.json manifest is not media)."""
    from omniret.data.synthetic import demo_corpus as generate

    listing = workdir / "corpus.files"
    manifest = workdir / "corpus" / "corpus.json"
    # A corpus written by an older version has no query list: write the current one.
    current = manifest.is_file() and '"omniret-demo/1"' in manifest.read_text(encoding="utf-8")
    if not listing.exists() or not current:
        paths = generate(workdir / "corpus")
        listing.write_text("".join(f"{p}\n" for p in paths))
    return listing.read_text().split()


def demo_model(workdir: Path) -> list[str]:
    """Overrides selecting the demo model, training it (and its benchmark) when missing."""
    from omniret.data.synthetic import generate_benchmark
    from omniret.training.recipe import load_stages, run_stages
    from omniret.training.trainer import run_dir_of, stage_model

    if not DEMO_RECIPE.is_file():
        raise FileNotFoundError(f"{DEMO_RECIPE} not found: run the demo from a checkout, or pass model.path")
    bench = workdir / "benchmark"
    stages = load_stages([DEMO_RECIPE], [f"data.train=[{bench / 'train'}]", f"eval.root={bench / 'eval'}",
                                         f"train.output_dir={workdir / 'runs'}",
                                         f"model.tiny_dir={workdir / 'models' / 'demo'}"])
    # Ingest and search at the pixel budget the model was trained at (PDF pages at 64 visual tokens).
    pixels = f"media.max_pixels={stages[-1].media.max_pixels}"
    embedder = [s for s in stages if s.train.objective != "rerank"][-1]
    rerankers = [s for s in stages if s.train.objective == "rerank"]

    def chosen() -> list[str]:
        # the last embedder stage serves /v1/embeddings; the recipe's own reranker (its final/ is a
        # full checkpoint) serves /v1/rerank and the demo's "vector + reranker" column
        out = [*stage_model(run_dir_of(embedder)), pixels]
        if rerankers:
            out.append(f"rerank.model.path={run_dir_of(rerankers[-1]) / 'final'}")
        return out

    if all((run_dir_of(s) / "final").is_dir() for s in stages):
        print(f"using the demo model trained before in {run_dir_of(embedder)}", flush=True)
        return chosen()
    if not (bench / "eval").is_dir():
        print(f"generating the training benchmark in {bench} ...", flush=True)
        generate_benchmark(bench, stages[0].data.synthetic)
    print("training the demo model" + (" and its reranker" if rerankers else "")
          + " (first run only; --fast skips it) ...", flush=True)
    import ray

    # Its own Ray session, with worker output shown: the training's progress lines come from the
    # Ray Train worker. The demo's session that follows keeps worker logs (Serve's) out of the console.
    # Finished stages are not trained again (an interrupted first run resumes where it stopped).
    try:
        run_stages(stages)
    finally:
        ray.shutdown()
    return chosen()


def configure(cfg: OmniretConfig, workdir: Path, fast: bool) -> OmniretConfig:
    overrides: list[str] = []
    label = "custom"
    if not cfg.model.path:
        if fast:
            label = "tiny"
        else:
            overrides += demo_model(workdir)
            label = "demo"
    # One index per model: a table holds one model's vectors.
    if cfg.index.uri == OmniretConfig().index.uri:
        overrides.append(f"index.uri={workdir / 'lancedb' / label}")
    if cfg.index.read_consistency_s is None or cfg.index.read_consistency_s > 1:
        overrides.append("index.read_consistency_s=1")
    data = cfg.model_dump()
    apply_overrides(data, overrides)
    return OmniretConfig.model_validate(data)


def trained_reranker(cfg: OmniretConfig) -> bool:
    """Whether the configured reranker is a trained one (a reranker checkpoint of its own is set).

    The embedding model's own yes/no head is never trained, so its scores would only show the
    machinery; without a reranker checkpoint the demo reports vector search alone.
    """
    return bool(cfg.rerank.model.path)


def check_queries(client, folder: Path, rerank: bool) -> str:
    """Run the demo's queries through the API; the precision@1 table (and the misses, by name)."""
    from omniret.data.synthetic.demo import read_demo_queries
    from omniret.eval.demo import format_scores, score_queries

    def search(query, with_rerank: bool):
        answer = client.search(text=query.text, image=folder / query.image if query.image else None,
                               pdf=folder / query.pdf if query.pdf else None, page=query.page or 0,
                               top_k=1, rerank=with_rerank, rerank_top_n=10 if with_rerank else None)
        hits = answer["results"]
        return (hits[0]["source_uri"], hits[0]["page"]) if hits else None

    queries = read_demo_queries(folder)
    columns = {"vector": score_queries(search, queries, folder)}
    if rerank:
        columns["vector + reranker"] = score_queries(search, queries, folder, rerank=True)
    lines = [format_scores(columns)]
    for query, got in columns["vector"].misses:
        lines.append(f"  missed ({query.kind}) {query.label()!r}: first came {got}, not {Path(query.expect).name}"
                     + (f" p.{query.expect_page + 1}" if query.expect_page is not None else ""))
    return "\n".join(lines)


def run_demo(cfg: OmniretConfig, workdir: Path, fast: bool = False, ui_port: int = 7860,
             exit_after_start: bool = False, rerank: bool | None = None) -> int:
    import ray
    from ray import serve

    from omniret.ingest.pipeline import run_ingest
    from omniret.serving.app import run_local
    from omniret.serving.client import OmniretClient
    from omniret.serving.webui import build_demo

    started = time.perf_counter()
    workdir = Path(workdir).resolve()
    corpus = demo_corpus(workdir)
    cfg = configure(cfg, workdir, fast)
    print(f"model ready after {time.perf_counter() - started:.0f} s", flush=True)
    # More logical CPUs than cores: Serve replicas and ingest tasks share two real cores.
    ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False,
             log_to_driver=False)
    try:
        summary = run_ingest(cfg, corpus)
        print(summary.format(), flush=True)
        url = run_local(cfg, blocking=False)
        client = OmniretClient(url, cfg.serve.api_key or os.environ.get("OMNIRET_API_KEY"))
        with_rerank = trained_reranker(cfg) if rerank is None else rerank
        print("\nprecision@1 of the demo's queries (the first result is the right file and page):", flush=True)
        print(check_queries(client, workdir / "corpus", with_rerank), flush=True)
        answer = client.search(text="a red circle", top_k=3)
        print("\nsearch 'a red circle' through the API:")
        for hit in answer["results"]:
            print(f"  cosine {hit['score']:+.3f}  {Path(hit['source_uri']).name}"
                  + (f" p.{hit['page'] + 1}" if hit["page"] is not None else ""))
        demo = build_demo(client)
        demo.launch(server_name="127.0.0.1", server_port=ui_port, prevent_thread_lock=True, quiet=True,
                    footer_links=[])
        print(f"\nAPI  {url}  (OpenAPI docs {url}/docs)\nUI   http://127.0.0.1:{ui_port}\n"
              f"ready in {time.perf_counter() - started:.0f} s" + ("" if exit_after_start else "; Ctrl-C stops"),
              flush=True)
        try:
            while not exit_after_start:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("\nstopping ...", flush=True)
        demo.close()
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0

"""The one-command demo: corpus -> model -> ingest -> Ray Serve API + Gradio app on 127.0.0.1.

1. Generate the demo corpus (images, short videos, multi-page PDFs) under ``--workdir``.
2. Pick the model: ``model.path`` if set; otherwise the quickstart model, trained on the generated
   benchmark the first time (a few minutes on a CPU), or, with ``--fast``, the untrained tiny model.
3. Ingest the corpus into LanceDB with Ray Data (idempotent: a re-run embeds nothing new).
4. Serve /v1/embeddings, /v1/rerank and /search with Ray Serve and open the Gradio app; print the URLs
   and one search answered through the API; stop cleanly on Ctrl-C.

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
QUICKSTART = REPO / "ray_jobs" / "configs" / "quickstart.yaml"


def demo_corpus(workdir: Path) -> list[str]:
    """The corpus's media files (generated on the first run; its corpus.json manifest is not media)."""
    from omniret.data.synthetic import demo_corpus as generate

    listing = workdir / "corpus.files"
    if not listing.exists():
        paths = generate(workdir / "corpus")
        listing.write_text("".join(f"{p}\n" for p in paths))
    return listing.read_text().split()


def quickstart_model(workdir: Path) -> list[str]:
    """Overrides selecting the quickstart model, training it (and its benchmark) when missing."""
    from omniret.data.synthetic import generate_benchmark
    from omniret.training.recipe import load_stages, run_stages
    from omniret.training.trainer import stage_model

    if not QUICKSTART.is_file():
        raise FileNotFoundError(f"{QUICKSTART} not found: run the demo from a checkout, or pass model.path")
    bench = workdir / "benchmark"
    stages = load_stages([QUICKSTART], [f"data.train=[{bench / 'train'}]", f"eval.root={bench / 'eval'}",
                                        f"train.output_dir={workdir / 'runs'}"])
    if not (bench / "eval").is_dir():
        print(f"generating the training benchmark in {bench} ...", flush=True)
        generate_benchmark(bench, stages[0].data.synthetic)
    print("training the quickstart model (first run only; --fast skips it) ...", flush=True)
    results = run_stages(stages)
    embedders = [r for cfg, r in zip(stages, results, strict=True) if cfg.train.objective != "rerank"]
    rerankers = [r for cfg, r in zip(stages, results, strict=True) if cfg.train.objective == "rerank"]
    overrides = stage_model(embedders[-1].run_dir)
    if rerankers:  # the quickstart's own reranker for /v1/rerank (its final/ is a full checkpoint)
        overrides.append(f"rerank.model.path={rerankers[-1].final}")
    return overrides


def configure(cfg: OmniretConfig, workdir: Path, fast: bool) -> OmniretConfig:
    overrides: list[str] = []
    label = "custom"
    if not cfg.model.path:
        if fast:
            label = "tiny"
        else:
            overrides += quickstart_model(workdir)
            label = "quickstart"
    # One index per model: a table holds one model's vectors.
    if cfg.index.uri == OmniretConfig().index.uri:
        overrides.append(f"index.uri={workdir / 'lancedb' / label}")
    if cfg.index.read_consistency_s is None or cfg.index.read_consistency_s > 1:
        overrides.append("index.read_consistency_s=1")
    data = cfg.model_dump()
    apply_overrides(data, overrides)
    return OmniretConfig.model_validate(data)


def run_demo(cfg: OmniretConfig, workdir: Path, fast: bool = False, ui_port: int = 7860,
             exit_after_start: bool = False) -> int:
    import ray
    from ray import serve

    from omniret.ingest.pipeline import run_ingest
    from omniret.serving.app import run_local
    from omniret.serving.client import OmniretClient
    from omniret.serving.webui import build_demo

    started = time.perf_counter()
    workdir = Path(workdir).resolve()
    corpus = demo_corpus(workdir)
    # More logical CPUs than cores: Serve replicas, ingest tasks and training share two real cores.
    ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False,
             log_to_driver=False)
    try:
        cfg = configure(cfg, workdir, fast)
        summary = run_ingest(cfg, corpus)
        print(summary.format(), flush=True)
        url = run_local(cfg, blocking=False)
        client = OmniretClient(url, cfg.serve.api_key or os.environ.get("OMNIRET_API_KEY"))
        # Vector search only: the quickstart's reranker does not beat the tiny embedder (docs/RECIPES.md).
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

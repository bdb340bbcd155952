"""Run an evaluation: read the datasets, embed (in this process, or through Ray Data for large runs),
score every dataset with the model and the baselines, aggregate as MMEB does, write the report.

:func:`run` is the one call the ``omniret eval`` command and ``ray_jobs/evaluate.py`` make.
"""

from __future__ import annotations

import logging
from typing import Any

from omniret.config import OmniretConfig
from omniret.data.catalog import DatasetInfo
from omniret.eval.baselines import BASELINES
from omniret.eval.dataset import EvalDataset, score_dataset
from omniret.eval.embedding import EmbeddedSet, embed_dataset
from omniret.eval.mmeb import aggregate, load_datasets
from omniret.eval.report import config_hash, frames_setting, write_report
from omniret.progress import Progress

log = logging.getLogger(__name__)


def run(cfg: OmniretConfig) -> dict[str, Any]:
    """Evaluate the configured model on ``cfg.eval.root``; writes report.json / report.md to ``cfg.eval.out``."""
    datasets, skipped = load_datasets(cfg.eval)
    if not datasets:
        raise FileNotFoundError(f"no evaluation dataset could be read under {cfg.eval.root}"
                                + (f": {'; '.join(skipped)}" if skipped else ""))
    if cfg.eval.ume_modes:  # a UME-R1 checkpoint, mode by mode (omniret.eval.ume)
        from omniret.eval.ume import evaluate_modes

        report = evaluate_modes(cfg, datasets, skipped)
    else:
        report = evaluate(cfg, datasets, skipped=skipped)
    if cfg.eval.out:
        json_path, _ = write_report(report, cfg.eval.out)
        log.info("report written to %s", json_path)
    return report


def use_ray(cfg: OmniretConfig, datasets: list[EvalDataset]) -> bool:
    if cfg.eval.ray != "auto":
        return bool(cfg.eval.ray)
    items = sum(len(ds.queries) + len(ds.candidates) for ds in datasets)
    return len(datasets) > 1 and items >= cfg.eval.ray_min_items


def evaluate(cfg: OmniretConfig, datasets: list[EvalDataset], *, embedder=None, reranker=None,
             skipped: list[str] | None = None) -> dict[str, Any]:
    """Score ``datasets``; ``embedder`` (optional) is reused for the in-process path. With
    ``eval.rerank_top_k``, the reranker (``reranker``, or ``rerank.model``) also reranks each query's top k."""
    from omniret.models.backbone import checkpoint_path
    from omniret.reasoning.attach import attach_to_datasets

    attach_to_datasets(cfg, datasets)  # TTE_t: ECR after the input (model.reasoning)
    path = "ray" if embedder is None and use_ray(cfg, datasets) else "in-process"
    if path == "ray":
        from omniret.eval.ray_eval import embed_with_ray

        embedded = embed_with_ray(cfg, datasets)
    else:
        if embedder is None:
            from omniret.models.embedder import Embedder

            embedder = Embedder.from_config(cfg)
        progress = Progress("embedded evaluation set", len(datasets), log)
        embedded = {}
        for ds in datasets:
            embedded[ds.name] = embed_dataset(embedder, ds)
            progress.step(ds.name)
    rows = [_score(cfg, ds, embedded[ds.name]) for ds in datasets]
    infos = {ds.name: ds.info for ds in datasets}
    model_path = checkpoint_path(cfg.model)
    report = {
        "model": {"id": model_path.name, "path": str(model_path), "adapter": cfg.model.adapter,
                  "template": cfg.model.template, "tiny_random": cfg.model.path is None},
        "config_hash": config_hash(cfg),
        "video_frames": frames_setting(cfg),
        "ties": cfg.eval.ties,
        "embedding": path,
        "root": cfg.eval.root,
        "datasets": rows,
        "summary": aggregate({r["name"]: r["score"] for r in rows}, infos),
        "meta_task_counts": _meta_counts(infos),
        "baselines": {b: "chance level (constant scores, expected ties)" if b == "chance" else
                      "distinct shared words between query and candidate text" for b in cfg.eval.baselines},
        "baseline_summary": {b: aggregate({r["name"]: r["baselines"][b] for r in rows
                                          if r["baselines"].get(b) is not None}, infos)
                             for b in cfg.eval.baselines},
        "skipped_datasets": list(skipped or []),
    }
    if cfg.eval.rerank_top_k:
        from omniret.eval.rerank import rerank_report

        if reranker is None:
            from omniret.models.reranker import Reranker

            reranker = Reranker.from_config(cfg)
        report["rerank"] = rerank_report(datasets, {n: e.scorer() for n, e in embedded.items()},
                                         {n: e.failed_queries for n, e in embedded.items()}, reranker,
                                         cfg.eval.rerank_top_k, cfg.eval.ties)
    return report


def _score(cfg: OmniretConfig, ds: EvalDataset, emb: EmbeddedSet) -> dict[str, Any]:
    metrics = score_dataset(ds, emb.scorer(), failed_queries=emb.failed_queries, ties=cfg.eval.ties)
    main = ds.info.metric
    baselines: dict[str, float | None] = {}
    for name in cfg.eval.baselines:
        scorer = BASELINES[name](ds)
        ties = "expected" if name == "chance" else cfg.eval.ties  # chance is only meaningful with expected ties
        baselines[name] = None if scorer is None else 100 * score_dataset(ds, scorer, ties=ties)[main]
    errors = [*emb.queries.errors.values(), *emb.candidates.errors.values()]
    log.info("%s: %s %.1f over %d queries", ds.name, main, 100 * metrics[main], len(ds.queries))
    return {"name": ds.name, "meta_task": ds.info.meta_task, "category": ds.info.category, "task": ds.info.task,
            "metric": main, "score": 100 * metrics[main], "metrics": metrics, "kind": ds.kind,
            "queries": len(ds.queries), "candidates": ds.candidate_counts(), "source": ds.source,
            "failed_queries": len(emb.queries.errors), "failed_candidates": len(emb.candidates.errors),
            "errors": errors[:20], "skipped_rows": len(ds.problems), "baselines": baselines}


def _meta_counts(infos: dict[str, DatasetInfo]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for info in infos.values():
        counts[info.meta_task] = counts.get(info.meta_task, 0) + 1
    return counts

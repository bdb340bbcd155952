"""Reranking evaluation: the reranker reorders the embedder's top k candidates of every query.

For each query, the candidates are ranked by the embedder; the first ``eval.rerank_top_k`` (with a
finite score) are scored by the yes/no reranker, with the query's instruction, and placed, in the
reranker's order, above the rest, which keep the embedder's order. hit@1 and nDCG@5 (linear gain,
MMEB's document-retrieval metric; equal to the exponential one for 0/1 relevance) are reported
before and after, per dataset and aggregated exactly as the embedder's report (MMEB meta-task means,
Image / Video / VisDoc / Overall as plain means over datasets).

A candidate the reranker cannot read (its media fail to decode) stays in the top k below every
candidate the reranker scored; a failed query scores 0 before and after, as in the main report.
Reranking runs in this process, also when the embedding went through Ray Data.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from omniret.errors import MediaError
from omniret.eval.dataset import EvalDataset, Scorer, score_dataset
from omniret.eval.mmeb import aggregate

log = logging.getLogger(__name__)

METRICS = {"hit@1": "hit@1", "ndcg@5": "ndcg_linear@5"}  # reported name -> key of eval.metrics


def rerank_scores(ds: EvalDataset, scorer: Scorer, reranker, k: int, failed_queries: set[int]
                  ) -> tuple[dict[int, np.ndarray], int]:
    """Per query: the candidates' scores after reranking the top ``k``; and the count of unreadable pairs."""
    out: dict[int, np.ndarray] = {}
    failed_pairs = 0
    for q in range(len(ds.queries)):
        if q in failed_queries:
            continue
        cands = ds.candidates_of(q)
        before = np.asarray(scorer(q, cands), dtype=np.float64)
        order = [int(i) for i in np.argsort(-before, kind="stable") if np.isfinite(before[i])][:k]
        if not order:
            out[q] = before
            continue
        query = ds.queries[q]
        item = query.to_item(name=f"{ds.name} query {ds.query_ids[q]}")
        docs = [ds.candidates[int(cands[i])].to_item(name=f"{ds.name} candidate {ds.candidate_ids[int(cands[i])]}")
                for i in order]
        relevance, bad = _score(reranker, item, docs, query.instruction)
        failed_pairs += bad
        after = before.copy()
        # Reranked candidates go above every other one (> the best embedder score); within them, the
        # reranker's order; unreadable ones (-1) below the readable ones but still above the rest.
        after[order] = before[order].max() + 2.0 + relevance
        out[q] = after
    return out, failed_pairs


def _score(reranker, query, docs, instruction) -> tuple[np.ndarray, int]:
    try:
        return np.asarray(reranker.score(query, docs, instruction), dtype=np.float64), 0
    except MediaError:  # find the unreadable ones; score the others
        values, bad = [], 0
        for doc in docs:
            try:
                values.append(float(reranker.score(query, [doc], instruction)[0]))
            except MediaError as exc:
                log.warning("reranking: %s", exc)
                values.append(-1.0)
                bad += 1
        return np.asarray(values), bad


def rerank_report(datasets: list[EvalDataset], scorers: dict[str, Scorer], failed: dict[str, set[int]],
                  reranker, k: int, ties: str = "expected") -> dict[str, Any]:
    """Before/after metrics of every dataset and their MMEB aggregation (see the module docstring)."""
    rows, infos = [], {ds.name: ds.info for ds in datasets}
    for ds in datasets:
        scores, bad = rerank_scores(ds, scorers[ds.name], reranker, k, failed[ds.name])
        before = score_dataset(ds, scorers[ds.name], failed_queries=failed[ds.name], ties=ties)
        after = score_dataset(ds, lambda q, _c, scores=scores: scores[q], failed_queries=failed[ds.name],
                              ties=ties)
        row = {"name": ds.name, "meta_task": ds.info.meta_task, "failed_pairs": bad,
               "before": {m: 100 * before[key] for m, key in METRICS.items()},
               "after": {m: 100 * after[key] for m, key in METRICS.items()}}
        log.info("%s reranked top %d: hit@1 %.1f -> %.1f", ds.name, k, row["before"]["hit@1"], row["after"]["hit@1"])
        rows.append(row)
    summary = {m: {when: aggregate({r["name"]: r[when][m] for r in rows}, infos) for when in ("before", "after")}
               for m in METRICS}
    backbone = getattr(reranker, "backbone", None)
    return {"top_k": k, "model": {"id": getattr(reranker, "model_id", None),
                                  "path": str(backbone.path) if backbone is not None else None},
            "datasets": rows, "summary": summary}


def markdown(section: dict[str, Any]) -> str:
    """The reranking tables: per dataset, then the MMEB summary groups."""
    lines = [f"reranker `{section['model']['id']}` on the embedder's top {section['top_k']}", "",
             "| dataset | meta-task | hit@1 before | hit@1 after | nDCG@5 before | nDCG@5 after |",
             "|---|---|---:|---:|---:|---:|"]
    for row in section["datasets"]:
        b, a = row["before"], row["after"]
        note = f" ({row['failed_pairs']} unreadable pairs)" if row["failed_pairs"] else ""
        lines.append(f"| {row['name']} | {row['meta_task']} | {b['hit@1']:.1f} | {a['hit@1']:.1f} | "
                     f"{b['ndcg@5']:.1f} | {a['ndcg@5']:.1f} |{note}")
    lines += ["", "| summary | hit@1 before | hit@1 after | nDCG@5 before | nDCG@5 after |",
              "|---|---:|---:|---:|---:|"]
    s = section["summary"]
    for group in ("Image", "Video", "VisDoc", "Overall"):
        if group in s["hit@1"]["before"]:
            lines.append(f"| {group} | {s['hit@1']['before'][group]:.1f} | {s['hit@1']['after'][group]:.1f} | "
                         f"{s['ndcg@5']['before'][group]:.1f} | {s['ndcg@5']['after'][group]:.1f} |")
    return "\n".join(lines) + "\n"


def summary_columns(report: dict[str, Any]) -> dict[str, float]:
    """Overall hit@1 / nDCG@5 before and after reranking, as flat columns (eval.csv); {} without reranking."""
    section = report.get("rerank")
    if not section:
        return {}
    s = section["summary"]
    return {f"rerank_{m}_{when}": s[m][when]["Overall"] for m in METRICS for when in ("before", "after")
            if "Overall" in s[m][when]}

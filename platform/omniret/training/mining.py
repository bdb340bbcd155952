"""Hard-negative mining: embed each dataset's queries and documents with a checkpoint, rank, rewrite.

For every dataset of ``data.train`` the candidate pool is every distinct document of its pairs
(positives and existing negatives). Each query ranks the pool; its own positives are removed, then

- ``mine.method=skip_top`` (B3's per-query rule, METHODS §11.2): skip the first ``skip_top`` ranks
  (likely false negatives) and keep the next ``top_k``; classification sets skip nothing (only the gold label is
  filtered, as B3 does);
- ``mine.method=threshold`` (Qwen3-VL, METHODS §8.2): keep the ``top_k`` best candidates scoring
  below the mean positive score + ``margin``; anything above is a likely false negative;
- ``mine.method=f1`` (SAIL-Embedding, METHODS §9.2): one threshold per dataset,
  ``lambda* = argmax_lambda F1(lambda)`` when a (query, document) pair is called positive if it
  scores >= lambda (:func:`f1_threshold`); each query keeps the ``top_k`` best candidates scoring
  below lambda*, anything above is treated as a false negative. Only negatives scoring at least the
  dataset's lowest positive score can be counted above a candidate lambda, so only those are kept
  in memory and the optimum is exact.

``mine.min_positive`` is Qwen3-VL's t+ (METHODS §8.2): a query is kept only if some positive scores
above it (:func:`keep_query`); otherwise the model cannot tell what its positive is, and the pair is
left out of the mined files (``mine.unconfident=drop``, the report's rule) or kept unchanged
(``keep``). The report does not give t+; it is unset (every query kept) by default. The pairs are written back, one jsonl per dataset in the native schema,
with the mined negatives replacing (or, ``keep_existing``, following) the old ones. Embedding runs in
this process or, with ``mine.ray=true``, through a Ray Data actor pool; an item whose media cannot be
read is reported and left out of the ranking.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from omniret.config import OmniretConfig
from omniret.data.mixing import CLASSIFICATION, group_by_dataset
from omniret.data.readers import read_sources
from omniret.data.schema import Pair, Side, write_pairs
from omniret.progress import Progress

log = logging.getLogger(__name__)


@dataclass
class DatasetReport:
    pairs: int = 0
    mined: int = 0  # pairs that received mined negatives
    unconfident: int = 0  # no positive above mine.min_positive: dropped (or kept unchanged)
    failed: int = 0  # items whose media could not be embedded
    positive_score: float = float("nan")
    negative_score: float = float("nan")
    threshold: float | None = None  # method f1: the dataset's lambda*
    threshold_f1: float | None = None


@dataclass
class MineResult:
    out: Path
    datasets: dict[str, DatasetReport] = field(default_factory=dict)
    skipped_rows: int = 0

    def table(self) -> str:
        lines = [f"{'dataset':24s} {'pairs':>6s} {'mined':>6s} {'unconf':>6s} {'failed':>6s} {'s(pos)':>7s} "
                 f"{'s(neg)':>7s}"]
        for name, r in self.datasets.items():
            lines.append(f"{name:24s} {r.pairs:6d} {r.mined:6d} {r.unconfident:6d} {r.failed:6d} "
                         f"{r.positive_score:7.3f} {r.negative_score:7.3f}")
        return "\n".join(lines)


def select_negatives(scores: np.ndarray, positives: set[int], *, method: str, top_k: int, skip_top: int = 0,
                     margin: float = 0.0, limit: float | None = None) -> list[int]:
    """Pool indices of the mined negatives of one query, given its scores over the pool.

    ``limit``: the dataset's lambda* (``method="f1"``): candidates must score below it.
    """
    order = [int(j) for j in np.argsort(-scores, kind="stable") if int(j) not in positives]
    if method == "skip_top":
        return order[skip_top:skip_top + top_k]
    if method == "threshold":
        limit = float(np.mean([scores[j] for j in positives])) + margin if positives else np.inf
        return [j for j in order if scores[j] < limit][:top_k]
    if method == "f1":
        if limit is None:
            raise ValueError("method f1 needs the dataset's threshold (limit)")
        return [j for j in order if scores[j] < limit][:top_k]
    raise ValueError(f"unknown mining method {method!r}; choose skip_top, threshold or f1")


def f1_threshold(positive_scores: np.ndarray, negative_scores: np.ndarray) -> tuple[float, float]:
    """SAIL's per-dataset threshold: ``(lambda*, F1(lambda*))``, lambda* = argmax F1 over the scores.

    A pair is called positive when it scores >= lambda: TP = positives >= lambda, FP = negatives >=
    lambda, FN = positives < lambda, F1 = 2TP / (2TP + FP + FN). F1 only changes at observed scores, so
    the candidates are the distinct scores. Where several give the best F1 the paper is silent; the
    highest is taken (the fewest negatives are treated as false negatives for the same F1).
    """
    pos = np.sort(np.asarray(positive_scores, dtype=np.float64).ravel())
    neg = np.sort(np.asarray(negative_scores, dtype=np.float64).ravel())
    if not len(pos):
        raise ValueError("the F1 threshold needs at least one positive score")
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise ValueError("scores must be finite")
    candidates = np.unique(np.concatenate([pos, neg]))
    tp = len(pos) - np.searchsorted(pos, candidates, side="left")
    fp = len(neg) - np.searchsorted(neg, candidates, side="left")
    fn = len(pos) - tp
    f1 = 2 * tp / (2 * tp + fp + fn)
    best = np.flatnonzero(f1 == f1.max())[-1]
    return float(candidates[best]), float(f1[best])


def keep_query(positive_scores: list[float] | np.ndarray, min_positive: float | None) -> bool:
    """Qwen3-VL's filter: keep a query only if some positive scores above ``min_positive`` (t+)."""
    if min_positive is None:
        return True
    return bool(len(positive_scores)) and float(np.max(positive_scores)) > min_positive


def embed_sides(cfg: OmniretConfig, sides: list[Side], names: list[str], embedder=None) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, ok) for ``sides``, in this process or through Ray Data (``mine.ray``)."""
    if cfg.mine.ray:
        return _embed_ray(cfg, sides, names)
    from omniret.eval.embedding import embed_sides as embed_local

    embedded = embed_local(embedder, sides, names)
    for i, error in embedded.errors.items():
        log.warning("mining: %s left out: %s", names[i], error)
    return embedded.vectors, embedded.ok


def _embed_ray(cfg: OmniretConfig, sides: list[Side], names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    import ray.data

    from omniret.cluster import ensure_ray
    from omniret.eval.ray_eval import EmbedBatch, resolved_config

    ensure_ray(None)
    rows = [{"key": i, "name": n, "side": json.dumps(s.to_dict())} for i, (s, n) in enumerate(zip(sides, names,
                                                                                                  strict=True))]
    out = ray.data.from_items(rows).map_batches(
        EmbedBatch, fn_constructor_kwargs={"config": resolved_config(cfg).model_dump()},
        batch_size=cfg.eval.batch_rows, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=cfg.mine.actors))
    vectors: dict[int, np.ndarray] = {}
    ok = np.zeros(len(sides), dtype=bool)
    for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
        for key, vector, good, error in zip(batch["key"], batch["vector"], batch["ok"], batch["error"], strict=True):
            vectors[int(key)], ok[int(key)] = vector, bool(good)
            if error:
                log.warning("mining: %s left out: %s", names[int(key)], error)
    dim = len(next(iter(vectors.values()))) if vectors else 0
    return np.stack([vectors.get(i, np.zeros(dim, np.float32)) for i in range(len(sides))]), ok


def mine_dataset(cfg: OmniretConfig, name: str, pairs: list[Pair], embedder=None) -> tuple[list[Pair], DatasetReport]:
    """Mine one dataset's pairs (see the module docstring); returns new pairs and a report."""
    m = cfg.mine
    report = DatasetReport(pairs=len(pairs))
    pool: list[Side] = []
    index: dict[str, int] = {}
    for pair in pairs:
        for side in [*pair.positives, *pair.negatives]:
            key = side.key()
            if key not in index:
                index[key] = len(pool)
                pool.append(side)
    queries, q_ok = embed_sides(cfg, [p.query for p in pairs], [f"{name} query {p.id}" for p in pairs], embedder)
    docs, d_ok = embed_sides(cfg, pool, [f"{name} document {i}" for i in range(len(pool))], embedder)
    report.failed = int((~q_ok).sum() + (~d_ok).sum())
    skip = 0 if pairs and pairs[0].task == CLASSIFICATION else m.skip_top
    limit = None
    if m.method == "f1":
        limit, report.threshold_f1 = dataset_threshold(pairs, index, queries, q_ok, docs, d_ok)
        report.threshold = limit
    out, pos_scores, neg_scores = [], [], []
    for i, pair in enumerate(pairs):
        positives = {index[s.key()] for s in pair.positives}
        if not q_ok[i]:
            out.append(pair)
            continue
        scores = np.where(d_ok, docs @ queries[i], -np.inf)
        valid_pos = [j for j in positives if d_ok[j]]
        positive = float(np.mean(scores[valid_pos])) if valid_pos else float("nan")
        pos_scores.append(positive)
        if not keep_query(scores[valid_pos], m.min_positive):
            report.unconfident += 1
            if m.unconfident == "keep":
                out.append(pair)
            continue
        excluded = positives | {j for j in range(len(pool)) if not d_ok[j]}
        chosen = select_negatives(np.where(d_ok, scores, -np.inf), excluded, method=m.method, top_k=m.top_k,
                                  skip_top=skip, margin=m.margin, limit=limit)
        chosen = [j for j in chosen if d_ok[j]]
        neg_scores += [float(scores[j]) for j in chosen]
        negatives = [pool[j] for j in chosen]
        if m.keep_existing:
            own = {s.key() for s in pair.negatives}
            negatives = [*pair.negatives, *(s for s in negatives if s.key() not in own)]
        report.mined += bool(chosen)
        out.append(Pair(pair.query, pair.positives, negatives, pair.dataset, pair.task, pair.id,
                        {**pair.meta, "mined": {"method": m.method, "scores": [round(float(scores[j]), 4)
                                                                                for j in chosen],
                                                "threshold": None if limit is None else round(limit, 4)}}))
    report.positive_score = float(np.mean(pos_scores)) if pos_scores else float("nan")
    report.negative_score = float(np.mean(neg_scores)) if neg_scores else float("nan")
    return out, report


def dataset_threshold(pairs: list[Pair], index: dict[str, int], queries: np.ndarray, q_ok: np.ndarray,
                      docs: np.ndarray, d_ok: np.ndarray) -> tuple[float, float]:
    """lambda* and its F1 over every (query, pool document) score of one dataset (two passes: positives
    first, then only the negatives scoring at least the lowest positive, the only ones that can count)."""
    positives = [sorted(j for j in (index[s.key()] for s in p.positives) if d_ok[j]) for p in pairs]
    pos = [float(docs[j] @ queries[i]) for i in range(len(pairs)) if q_ok[i] for j in positives[i]]
    if not pos:
        raise ValueError("no readable (query, positive) pair to set the F1 threshold with")
    floor, neg = min(pos), []
    for i in range(len(pairs)):
        if q_ok[i]:
            scores = docs @ queries[i]
            keep = d_ok & (scores >= floor)
            keep[positives[i]] = False
            neg.append(scores[keep])
    return f1_threshold(np.array(pos), np.concatenate(neg) if neg else np.array([]))


def mine(cfg: OmniretConfig, out: str | Path | None = None) -> MineResult:
    """Mine every dataset of ``cfg.data.train`` with ``cfg.model``; writes ``<out>/<dataset>.jsonl``."""
    out = Path(out or cfg.mine.out or Path(cfg.train.output_dir) / cfg.train.name / "mined")
    read = read_sources(cfg.data.train, root=cfg.data.root)
    if not read.pairs:
        raise FileNotFoundError(f"no training pairs could be read from {cfg.data.train}")
    from omniret.reasoning.attach import attach_to_pairs

    attach_to_pairs(cfg, read.pairs)  # a TTE_t model ranks items with their ECR (model.reasoning)
    embedder = None
    if not cfg.mine.ray:
        from omniret.models.embedder import Embedder

        embedder = Embedder.from_config(cfg)
        embedder.embed_cfg = embedder.embed_cfg.model_copy(update={"progress": False})
    result = MineResult(out, skipped_rows=read.skipped)
    datasets = sorted(group_by_dataset(read.pairs).items())
    progress = Progress("mined dataset", len(datasets), log)
    for name, pairs in datasets:
        mined, report = mine_dataset(cfg, name, pairs, embedder)
        write_pairs(out / f"{name}.jsonl", mined)
        result.datasets[name] = report
        progress.step(f"{name}, {report.mined} of {report.pairs} pairs, s(pos) {report.positive_score:.3f}, "
                      f"s(neg) {report.negative_score:.3f}"
                      + ("" if report.threshold is None
                         else f", lambda* {report.threshold:.3f} (F1 {report.threshold_f1:.3f})"))
    # YAML, not JSON: the folder is read back as pair files, and readers take every .json file.
    (out / "mining.yaml").write_text(yaml.safe_dump(_summary(cfg, result), sort_keys=False))
    return result


def _summary(cfg: OmniretConfig, result: MineResult) -> dict[str, Any]:
    return {"model": cfg.model.path, "adapter": cfg.model.adapter, "settings": cfg.mine.model_dump(),
            "skipped_rows": result.skipped_rows,
            "datasets": {k: vars(v) for k, v in result.datasets.items()}}

"""Ranking metrics of one query: hit@k, recall@k, MRR, nDCG@k (linear and exponential gain).

Inputs are the candidates' scores and graded relevance (0 = not relevant). Definitions, as in the
MMEB-V2 evaluator: ``hit@k`` is 1 when a relevant candidate is among the first k; ``recall@k`` is
the fraction of relevant candidates among the first k; ``mrr`` is 1 / the rank of the first relevant
candidate (no cut-off); ``ndcg_linear@k`` divides DCG@k = sum(rel / log2(rank + 1)) by the DCG@k of
the ideal order of the graded relevances (MMEB visdoc's headline metric), ``ndcg_exponential@k`` uses
gain 2**rel - 1 instead (identical for 0/1 relevance).

Ties (equal scores) are handled deterministically, never by candidate index (which would favour the
MMEB convention of putting the positive first):

- ``"expected"`` (default): the value a metric has in expectation over a uniformly random order
  within each group of equal scores, computed exactly. A constant scorer thus gets chance level:
  hit@1 = (relevant) / (candidates).
- ``"pessimistic"``: within a tie, relevant candidates rank after irrelevant ones, lower grades
  before higher ones; a constant scorer gets the worst possible value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import takewhile

import numpy as np

DEFAULT_KS = (1, 5, 10)
TIES = ("expected", "pessimistic")


def _blocks(scores: np.ndarray, rel: np.ndarray, ties: str) -> list[tuple[int, np.ndarray]]:
    """Groups of tied candidates in rank order: (number ranked above the group, relevance of its members)."""
    if ties == "pessimistic":
        order = np.lexsort((rel, -scores))  # by score descending, then relevance ascending
        return [(i, rel[order[i : i + 1]]) for i in range(len(order))]
    if ties != "expected":
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(order)]
    return [(int(a), rel[order[a:b]]) for a, b in zip(starts, ends, strict=True)]


def _p_none(m: int, r: int, j: int) -> float:
    """P(no relevant among j drawn without replacement from m of which r are relevant)."""
    p = 1.0
    for t in range(j):
        p *= max(m - r - t, 0) / (m - t)
    return p


def _expected_discount(a: int, m: int, k: int | None) -> float:
    """Mean of 1/log2(rank + 1) over ranks a+1 .. a+m (0 beyond rank k)."""
    last = a + m if k is None else min(a + m, k)
    return sum(1.0 / math.log2(rank + 1) for rank in range(a + 1, last + 1)) / m


def query_metrics(scores: Sequence[float] | np.ndarray, relevance: Sequence[float] | np.ndarray,
                  ks: Iterable[int] = DEFAULT_KS, ties: str = "expected") -> dict[str, float]:
    """All metrics of one query. ``relevance`` is graded (0 = irrelevant); at least one must be > 0."""
    scores = np.asarray(scores, dtype=np.float64)
    rel = np.asarray(relevance, dtype=np.float64)
    if scores.shape != rel.shape or scores.ndim != 1 or len(scores) == 0:
        raise ValueError(f"scores and relevance must be equal-length 1-d arrays, got {scores.shape} and {rel.shape}")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    n_rel = int((rel > 0).sum())
    if n_rel == 0:
        raise ValueError("a query needs at least one relevant candidate")
    blocks = _blocks(scores, rel, ties)
    ks = sorted(set(ks))
    out: dict[str, float] = {}
    for k in ks:
        p_none, found = 1.0, 0.0
        for a, members in blocks:
            if a >= k:
                break
            m, r = len(members), int((members > 0).sum())
            j = min(m, k - a)
            p_none *= _p_none(m, r, j)
            found += r * j / m
        out[f"hit@{k}"] = 1.0 - p_none
        out[f"recall@{k}"] = found / n_rel
    out["mrr"] = _mrr(blocks)
    ideal = np.sort(rel)[::-1]
    for k in ks:
        for name, gain in (("linear", lambda x: x), ("exponential", lambda x: 2.0 ** x - 1.0)):
            dcg = sum(float(gain(members).sum()) * _expected_discount(a, len(members), k)
                      for a, members in takewhile(lambda block, k=k: block[0] < k, blocks))
            idcg = sum(float(gain(g)) / math.log2(i + 2) for i, g in enumerate(ideal[:k]))
            out[f"ndcg_{name}@{k}"] = dcg / idcg if idcg > 0 else 0.0
    return out


def _mrr(blocks: list[tuple[int, np.ndarray]]) -> float:
    for a, members in blocks:
        m, r = len(members), int((members > 0).sum())
        if r == 0:
            continue
        expected, p_none_before = 0.0, 1.0
        for t in range(1, m - r + 2):  # the first relevant member sits at offset t with this probability
            p_first = p_none_before * r / (m - t + 1)
            expected += p_first / (a + t)
            p_none_before *= (m - t + 1 - r) / (m - t + 1)
        return expected
    return 0.0


def mean_metrics(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Average per-query metrics (keys of the first row)."""
    if not rows:
        return {}
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}


def zero_metrics(ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """The metrics of a query that could not be answered (e.g. its media failed to decode)."""
    ks = sorted(set(ks))
    keys = [f"{m}@{k}" for k in ks for m in ("hit", "recall")] + ["mrr"]
    keys += [f"ndcg_{g}@{k}" for k in ks for g in ("linear", "exponential")]
    return dict.fromkeys(keys, 0.0)

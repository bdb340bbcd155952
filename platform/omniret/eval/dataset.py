"""An evaluation dataset in one shape for every MMEB protocol, and how it is scored.

Queries and candidates are :class:`~omniret.data.schema.Side` records (absolute paths, so they can
travel to Ray workers as JSON). Candidates are deduplicated into one pool. A *local* dataset ranks,
for each query, its own candidate list (``lists[q]``, positive first as MMEB writes it); a *global*
one ranks the whole pool. ``qrels[q]`` maps pool indices to graded relevance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from omniret.data.catalog import DatasetInfo
from omniret.data.schema import Side
from omniret.eval.metrics import DEFAULT_KS, mean_metrics, query_metrics, zero_metrics

#: scorer(query index, candidate pool indices) -> scores of those candidates
Scorer = Callable[[int, np.ndarray], np.ndarray]


@dataclass
class EvalDataset:
    info: DatasetInfo
    queries: list[Side] = field(default_factory=list)
    query_ids: list[str] = field(default_factory=list)
    candidates: list[Side] = field(default_factory=list)
    candidate_ids: list[str] = field(default_factory=list)
    qrels: list[dict[int, float]] = field(default_factory=list)
    lists: list[list[int]] | None = None  # local: candidate pool indices per query; None: global
    source: str = ""
    problems: list[str] = field(default_factory=list)
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def kind(self) -> str:
        return "global" if self.lists is None else "local"

    def add_candidate(self, side: Side, cid: str | None = None) -> int:
        """Pool index of ``side`` (added once; deduplicated by ``cid`` or by content)."""
        key = cid if cid is not None else side.key()
        if key not in self._index:
            self._index[key] = len(self.candidates)
            self.candidates.append(side)
            self.candidate_ids.append(cid if cid is not None else f"c{len(self.candidates) - 1}")
        return self._index[key]

    def add_local(self, qid: str, query: Side, candidates: list[Side], relevant: list[int] | None = None) -> None:
        """A query ranked against its own list; ``candidates[0]`` is the positive, or those at ``relevant``."""
        if self.lists is None:
            self.lists = []
        indices = [self.add_candidate(c) for c in candidates]
        self.queries.append(query)
        self.query_ids.append(qid)
        self.lists.append(indices)
        self.qrels.append({indices[i]: 1.0 for i in (relevant if relevant is not None else [0])})

    def add_global(self, qid: str, query: Side, graded: dict[int, float]) -> None:
        self.queries.append(query)
        self.query_ids.append(qid)
        self.qrels.append(graded)

    def head(self, n: int | None) -> EvalDataset:
        """The first ``n`` queries (the pool of a global set is kept whole, as MMEB ranks against it)."""
        if n is None or n >= len(self.queries):
            return self
        return EvalDataset(self.info, self.queries[:n], self.query_ids[:n], self.candidates, self.candidate_ids,
                           self.qrels[:n], None if self.lists is None else self.lists[:n], self.source,
                           self.problems, self._index)

    def candidate_counts(self) -> dict[str, float]:
        per_query = [len(c) for c in self.lists] if self.lists is not None else [len(self.candidates)]
        used = {i for c in self.lists for i in c} if self.lists is not None else set(range(len(self.candidates)))
        return {"pool": len(used), "per_query_mean": float(np.mean(per_query)) if per_query else 0.0,
                "per_query_min": min(per_query, default=0), "per_query_max": max(per_query, default=0)}

    def candidates_of(self, q: int) -> np.ndarray:
        return np.asarray(self.lists[q] if self.lists is not None else range(len(self.candidates)), dtype=np.int64)


def score_dataset(ds: EvalDataset, scorer: Scorer, *, failed_queries: set[int] | frozenset[int] = frozenset(),
                  ks=DEFAULT_KS, ties: str = "expected") -> dict[str, float]:
    """Mean metrics over the queries of ``ds``; a failed query scores 0 on every metric."""
    rows = []
    for q in range(len(ds.queries)):
        if q in failed_queries:
            rows.append(zero_metrics(ks))
            continue
        cands = ds.candidates_of(q)
        relevance = np.array([ds.qrels[q].get(int(c), 0.0) for c in cands])
        if not (relevance > 0).any():
            rows.append(zero_metrics(ks))  # its relevant candidates are not in the pool (or failed)
            continue
        rows.append(query_metrics(scorer(q, cands), relevance, ks, ties))
    return mean_metrics(rows)

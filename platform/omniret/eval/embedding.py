"""Embed the queries and candidates of evaluation sets in this process; failures are kept per item.

An item whose media cannot be decoded does not stop the run: its error (naming the dataset, the item
and the file) is recorded, a failed query scores 0 and a failed candidate ranks last.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from omniret.data.schema import Side
from omniret.eval.dataset import EvalDataset

log = logging.getLogger(__name__)


@dataclass
class Embedded:
    vectors: np.ndarray  # (N, D) float32, zero rows where ok is False
    ok: np.ndarray  # (N,) bool
    errors: dict[int, str] = field(default_factory=dict)  # index of a failed item -> what went wrong


@dataclass
class EmbeddedSet:
    queries: Embedded
    candidates: Embedded

    def scorer(self):
        q, c = self.queries.vectors, self.candidates.vectors
        ok = self.candidates.ok

        def score(qi: int, cands: np.ndarray) -> np.ndarray:
            return np.where(ok[cands], c[cands] @ q[qi], -np.inf).astype(np.float64)

        return score

    @property
    def failed_queries(self) -> set[int]:
        return set(np.flatnonzero(~self.queries.ok).tolist())


def item_names(ds: EvalDataset, role: str) -> list[str]:
    ids = ds.query_ids if role == "query" else ds.candidate_ids
    return [f"{ds.name} {role} {i}" for i in ids]


def embed_sides(embedder, sides: list[Side], names: list[str]) -> Embedded:
    items = [side.to_item(name=name) for side, name in zip(sides, names, strict=True)]
    vectors, kept, errors = embedder.encode_lenient(items)
    out = np.zeros((len(items), vectors.shape[1]), dtype=np.float32)
    ok = np.zeros(len(items), dtype=bool)
    out[kept], ok[kept] = vectors, True
    failed = [i for i in range(len(items)) if not ok[i]]  # encode_lenient reports errors in item order
    return Embedded(out, ok, {i: str(e) for i, e in zip(failed, errors, strict=True)})


def embed_dataset(embedder, ds: EvalDataset) -> EmbeddedSet:
    return EmbeddedSet(embed_sides(embedder, ds.queries, item_names(ds, "query")),
                       embed_sides(embedder, ds.candidates, item_names(ds, "candidate")))

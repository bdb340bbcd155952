"""Embed the queries and candidates of evaluation sets in this process; failures are kept per item.

An item that cannot be embedded (media that cannot be decoded, or any other error, even one raised
inside the model for a whole batch) does not stop the run: its error (naming the dataset, the item
and the file) is recorded, a failed query scores 0 and a failed candidate ranks last.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from omniret.data.schema import Side
from omniret.errors import MediaError
from omniret.eval.dataset import EvalDataset
from omniret.models.isolation import embed_isolated, reason_of

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
    makers = [partial(side.to_item, name=name) for side, name in zip(sides, names, strict=True)]
    vectors, errors = embed_isolated(embedder, makers)
    ok = np.ones(len(sides), dtype=bool)
    ok[list(errors)] = False
    # A MediaError names its item and file itself; other errors get the item's name in front.
    return Embedded(vectors, ok, {i: str(e) if isinstance(e, MediaError) else f"{names[i]}: {reason_of(e)}"
                                  for i, e in sorted(errors.items())})


def embed_dataset(embedder, ds: EvalDataset) -> EmbeddedSet:
    return EmbeddedSet(embed_sides(embedder, ds.queries, item_names(ds, "query")),
                       embed_sides(embedder, ds.candidates, item_names(ds, "candidate")))

"""Precision@1 of the demo's queries: does the first search result show what the query asks for?

The queries and their answers come from the demo corpus's ``corpus.json``
(:func:`omniret.data.synthetic.demo.read_demo_queries`). The search itself is a callable, so the same
check runs through the HTTP API (the demo), or straight against an index (tests, scripts).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from omniret.data.synthetic.demo import DemoQuery

#: (query, with the reranker?) -> the first hit as (absolute source path, page or None), or None.
Search = Callable[[DemoQuery, bool], tuple[str, int | None] | None]


@dataclass
class DemoScore:
    """Hits at rank 1 per query kind, and the queries that missed with what came first instead."""

    hits: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)
    misses: list[tuple[DemoQuery, str]] = field(default_factory=list)

    @property
    def precision(self) -> float:
        return sum(self.hits.values()) / max(1, sum(self.total.values()))

    def by_kind(self) -> dict[str, float]:
        return {k: self.hits.get(k, 0) / n for k, n in self.total.items()}


def score_queries(search: Search, queries: list[DemoQuery], folder: str | Path, rerank: bool = False) -> DemoScore:
    """Run every query through ``search`` and count those whose first hit is the expected file and page."""
    folder = Path(folder).resolve()
    out = DemoScore()
    for query in queries:
        out.total[query.kind] = out.total.get(query.kind, 0) + 1
        first = search(query, rerank)
        expected = (str(folder / query.expect), query.expect_page)
        if first is not None and (str(Path(first[0]).resolve()), first[1]) == expected:
            out.hits[query.kind] = out.hits.get(query.kind, 0) + 1
        else:
            got = "nothing" if first is None else Path(first[0]).name + (f" p.{first[1] + 1}" if first[1] is not None
                                                                         else "")
            out.misses.append((query, got))
    return out


def format_scores(columns: dict[str, DemoScore]) -> str:
    """A table: one row per query kind and one for all queries, one precision@1 column per setting."""
    names = list(columns)
    first = next(iter(columns.values()))
    lines = [f"{'queries':<14}{'n':>4}" + "".join(f"{n:>18}" for n in names)]
    for kind, n in first.total.items():
        lines.append(f"{kind:<14}{n:>4}" + "".join(f"{columns[c].by_kind().get(kind, 0.0):>18.2f}" for c in names))
    lines.append(f"{'all':<14}{sum(first.total.values()):>4}" + "".join(f"{columns[c].precision:>18.2f}"
                                                                         for c in names))
    return "\n".join(lines)

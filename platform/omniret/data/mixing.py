"""Mix training datasets: per-dataset caps, sampling weights, and RzenEmbed's merged classification set.

RzenEmbed (arXiv 2510.27350 §3.4.2) caps every dataset (100k pairs), draws each batch from a single
dataset, and merges all image-classification datasets into one so that batches mixing label sets
reduce in-batch false negatives. :func:`mix` does the bookkeeping: it groups pairs by dataset, caps
each group (a seeded, order-preserving subsample), optionally merges the classification groups into
``merged_name``, and turns weights into sampling probabilities.

A group's probability is proportional to ``base x weight``: ``base`` is its (capped) size when
``weighting="size"`` (every pair equally likely) or 1 when ``"uniform"`` (every dataset equally
likely). ``weight`` is looked up by group name, then by task group (``image_retrieval: 2`` upsamples
every image-retrieval set), and defaults to 1.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from omniret.data.schema import Pair

if TYPE_CHECKING:
    from omniret.config import DataConfig
    from omniret.data.readers import ReadResult

CLASSIFICATION = "image_classification"


@dataclass
class Mixture:
    groups: dict[str, list[Pair]] = field(default_factory=dict)  # sampling group -> pairs
    probabilities: dict[str, float] = field(default_factory=dict)  # sampling group -> probability
    sources: dict[str, list[str]] = field(default_factory=dict)  # sampling group -> datasets in it

    def table(self) -> str:
        lines = [f"{'group':32s} {'pairs':>7s} {'prob':>6s}  datasets"]
        for name, pairs in self.groups.items():
            lines.append(f"{name:32s} {len(pairs):7d} {self.probabilities[name]:6.3f}  "
                         f"{', '.join(self.sources[name])}")
        return "\n".join(lines)


def cap(pairs: list[Pair], limit: int | None, seed: int = 0) -> list[Pair]:
    """At most ``limit`` pairs: a seeded random subset kept in its original order."""
    if limit is None or len(pairs) <= limit:
        return list(pairs)
    keep = sorted(random.Random(seed).sample(range(len(pairs)), limit))
    return [pairs[i] for i in keep]


def group_by_dataset(pairs: Iterable[Pair]) -> dict[str, list[Pair]]:
    groups: dict[str, list[Pair]] = {}
    for pair in pairs:
        groups.setdefault(pair.dataset, []).append(pair)
    return groups


def mix(pairs: Iterable[Pair], *, caps: Mapping[str, int] | None = None, max_per_dataset: int | None = None,
        weights: Mapping[str, float] | None = None, weighting: Literal["size", "uniform"] = "size",
        merge_classification: bool = True, merged_name: str = CLASSIFICATION, seed: int = 0) -> Mixture:
    """Group, cap, merge and weight ``pairs``; see the module docstring for the rules."""
    caps, weights = dict(caps or {}), dict(weights or {})
    by_dataset = group_by_dataset(pairs)
    out = Mixture()
    tasks: dict[str, str] = {}
    for index, (name, group) in enumerate(sorted(by_dataset.items())):
        capped = cap(group, caps.get(name, max_per_dataset), seed + index)
        task = group[0].task
        target = merged_name if merge_classification and task == CLASSIFICATION else name
        out.groups.setdefault(target, []).extend(capped)
        out.sources.setdefault(target, []).append(name)
        tasks[target] = task
    raw = {}
    for name, group in out.groups.items():
        weight = weights.get(name, weights.get(tasks[name], 1.0))
        if weight < 0:
            raise ValueError(f"weight of {name!r} must be >= 0, got {weight}")
        raw[name] = (len(group) if weighting == "size" else 1.0) * weight if group else 0.0
    total = sum(raw.values())
    if total <= 0:
        raise ValueError("every dataset has weight 0 or no pairs; nothing to sample")
    out.probabilities = {name: value / total for name, value in raw.items()}
    return out


def load_mixture(data: DataConfig) -> tuple[Mixture, ReadResult]:
    """Read ``data.train`` (a :class:`omniret.config.DataConfig`) and mix it; returns (mixture, read result)."""
    from omniret.data.readers import read_sources

    read = read_sources(data.train, root=data.root)
    mixture = mix(read.pairs, caps=data.caps, max_per_dataset=data.max_per_dataset, weights=data.weights,
                  weighting=data.weighting, merge_classification=data.merge_classification, seed=data.seed)
    return mixture, read

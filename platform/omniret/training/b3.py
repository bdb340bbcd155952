"""B3 batches of mutual hard negatives (METHODS §11.2; Think-Then-Embed's cluster batches, §7.3).

From a trained embedder's rankings, per training dataset (group):

1. every query ranks every pair's positive; its own positive and the first ``skip`` ranks (likely
   false negatives) are dropped and the next ``keep`` kept: ``S_i = R_i[p : p + m]``;
2. only bidirectional edges (``j ∈ S_i`` and ``i ∈ S_j``) form an undirected graph;
3. METIS (pymetis) partitions it into communities of ``K`` pairs;
4. a batch is ``|B| / K`` communities, drawn as seeded permutations of the communities.

METIS balances parts only within a tolerance; B3 needs communities of exactly ``K``, so the parts
are rebalanced afterwards (our choice; the paper does not say how): the largest ``N // K`` parts
keep ``K`` members (and one part ``N mod K``), and the members a part gives up, or those of
dissolved parts, move to the part with room where they have the most edges. A member leaves a part
weakest-connected first, and one pass of swaps then improves the moved nodes' places.

Communities are computed before a stage trains, with the stage's starting model, and saved as
``b3.json`` in the run folder (positions within each mixture group, plus a fingerprint of the
group's pairs, checked when the sampler loads them).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from omniret.errors import ConfigError

log = logging.getLogger(__name__)

B3_FILE = "b3.json"


def neighbour_lists(scores: np.ndarray, skip: int, keep: int) -> list[list[int]]:
    """``S_i``: row ``i``'s ranking of the columns without ``i`` itself, ranks ``skip .. skip+keep-1``."""
    out = []
    for i, row in enumerate(np.asarray(scores, dtype=np.float64)):
        order = [int(j) for j in np.argsort(-row, kind="stable") if j != i and np.isfinite(row[j])]
        out.append(order[skip:skip + keep])
    return out


def mutual_graph(neighbours: Sequence[Sequence[int]]) -> list[list[int]]:
    """Adjacency lists of the undirected graph of bidirectional edges."""
    sets = [set(n) for n in neighbours]
    return [sorted(j for j in sets[i] if i in sets[j]) for i in range(len(sets))]


def partition(adjacency: Sequence[Sequence[int]], size: int, seed: int = 0) -> list[list[int]]:
    """Communities of exactly ``size`` nodes (one of ``N mod size`` when it does not divide), by METIS."""
    n = len(adjacency)
    if size < 1:
        raise ValueError(f"community size must be >= 1, got {size}")
    parts = -(-n // size)
    if parts <= 1:
        return [list(range(n))] if n else []
    import pymetis

    if any(adjacency):
        result = pymetis.part_graph(parts, adjacency=[list(a) for a in adjacency],
                                    options=pymetis.Options(seed=seed, ufactor=1))
        membership = list(result.vertex_part)
    else:  # no mutual edges at all: METIS has nothing to cut; start from index order
        membership = [i // size for i in range(n)]
    return balance(membership, adjacency, size)


def balance(membership: Sequence[int], adjacency: Sequence[Sequence[int]], size: int) -> list[list[int]]:
    """Turn any partition into communities of exactly ``size`` (see the module docstring)."""
    n = len(membership)
    groups: dict[int, list[int]] = {}
    for node, part in enumerate(membership):
        groups.setdefault(int(part), []).append(node)
    ranked = sorted(groups.values(), key=lambda m: (-len(m), m[0]))
    full, rest = divmod(n, size)
    targets = [size] * full + ([rest] if rest else [])
    parts = [list(m) for m in ranked[:len(targets)]]
    parts += [[] for _ in range(len(targets) - len(parts))]
    queue = [node for members in ranked[len(targets):] for node in members]  # dissolved parts
    neighbours = [set(a) for a in adjacency]
    for part, target in zip(parts, targets, strict=True):
        while len(part) > target:
            inside = set(part)
            weakest = min(part, key=lambda v: (len(neighbours[v] & inside), -v))
            part.remove(weakest)
            queue.append(weakest)
    for node in sorted(queue):
        open_parts = [k for k, part in enumerate(parts) if len(part) < targets[k]]
        best = max(open_parts, key=lambda k: (len(neighbours[node] & set(parts[k])), -k))
        parts[best].append(node)
    _improve(parts, neighbours, sorted(queue))
    return [sorted(part) for part in parts]


def _improve(parts: list[list[int]], neighbours: list[set[int]], moved: list[int]) -> None:
    """One pass of size-preserving swaps for the nodes the balancing moved: swap a moved node with the
    member of another part when that raises the number of edges inside parts (greedy placement can
    leave a node beside strangers while an unconnected node holds its neighbours' last seat)."""
    where = {v: k for k, part in enumerate(parts) for v in part}
    sets = [set(part) for part in parts]

    def conn(v: int, k: int) -> int:
        return len(neighbours[v] & sets[k])  # no self-loops: a node never counts itself

    for u in moved:
        a = where[u]
        best, best_gain = None, 0
        for b in sorted({where[v] for v in neighbours[u]} - {a}):
            for w in sorted(sets[b]):
                gain = conn(u, b) - conn(u, a) + conn(w, a) - conn(w, b) - 2 * (w in neighbours[u])
                if gain > best_gain:
                    best, best_gain = (b, w), gain
        if best is not None:
            b, w = best
            for k, old, new in ((a, u, w), (b, w, u)):
                sets[k].remove(old)
                sets[k].add(new)
                parts[k][parts[k].index(old)] = new
            where[u], where[w] = b, a


class CommunityStream:
    """Consecutive seeded permutations of communities; ``take(n)`` returns ``n // K`` whole communities
    (at least one). A cycle's remainder too short for a batch is skipped, as in plain streams."""

    def __init__(self, communities: Sequence[Sequence[int]], key: str):
        self.communities = [list(c) for c in communities if c]
        self.key = key
        self.cycle, self.order, self.cursor = 0, self._permutation(0), 0

    def _permutation(self, cycle: int) -> list[list[int]]:
        order = list(self.communities)
        random.Random(f"{self.key}/{cycle}").shuffle(order)
        return order

    def take(self, n: int) -> list[int]:
        size = max(len(c) for c in self.communities)
        count = max(1, n // size)
        if self.cursor + count > len(self.order):
            self.cycle += 1
            self.order, self.cursor = self._permutation(self.cycle), 0
        chosen = self.order[self.cursor:self.cursor + count]
        self.cursor += count
        return [i for c in chosen for i in c]


def epoch_batches(communities: Sequence[Sequence[int]], batch_size: int, seed: int = 0, epoch: int = 0
                  ) -> list[list[int]]:
    """One pass over the communities as batches of ``batch_size // K`` communities (remainder dropped)."""
    stream = CommunityStream(communities, f"{seed}/{epoch}")
    per = max(1, batch_size // max(len(c) for c in communities))
    return [stream.take(batch_size) for _ in range(len(stream.communities) // per)]


# ---- building and loading the communities of a training run ------------------------------------


def fingerprint(pairs: Sequence[Any]) -> int:
    """A checksum of a group's queries (without reasoning, which is attached later) in order."""
    return zlib.crc32("\n".join(dataclasses.replace(p.query, reasoning=None).key() for p in pairs).encode())


def group_communities(queries: np.ndarray, targets: np.ndarray, *, size: int, skip: int, keep: int,
                      seed: int = 0) -> list[list[int]]:
    """Communities of one group from its query and positive embeddings (unit vectors, rows = pairs)."""
    scores = queries @ targets.T
    return partition(mutual_graph(neighbour_lists(scores, skip, keep)), size, seed)


def build_communities(cfg: Any, groups: Mapping[str, Sequence[Any]], embedder: Any) -> dict[str, Any]:
    """Embed each group's queries and first positives with ``embedder`` and partition them."""
    from omniret.training.mining import embed_sides

    t = cfg.train
    out: dict[str, Any] = {"settings": {"size": t.b3_community, "skip": t.b3_skip, "keep": t.b3_neighbours,
                                        "seed": t.seed}, "groups": {}}
    for name, pairs in sorted(groups.items()):
        names = [f"{name} {p.id or i}" for i, p in enumerate(pairs)]
        q, q_ok = embed_sides(cfg, [p.query for p in pairs], [f"{n} query" for n in names], embedder)
        d, d_ok = embed_sides(cfg, [p.positives[0] for p in pairs], [f"{n} positive" for n in names], embedder)
        q = np.where(q_ok[:, None], q, 0.0)
        scores = np.where(d_ok[None, :], q @ d.T, -np.inf)  # unreadable targets rank nowhere
        communities = partition(mutual_graph(neighbour_lists(scores, t.b3_skip, t.b3_neighbours)),
                                t.b3_community, t.seed)
        out["groups"][name] = {"communities": communities,
                               "fingerprint": fingerprint(pairs)}
        log.info("b3: %s: %d pairs in %d communities of %d", name, len(pairs), len(communities), t.b3_community)
    return out


def save_communities(path: str | Path, data: Mapping[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)
    return path


def load_communities(path: str | Path, groups: Mapping[str, Sequence[Any]]) -> dict[str, list[list[int]]]:
    """Communities per group, checked against the mixture the sampler was built from."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"train.batching=b3 needs communities at {path}; a recipe stage builds them with "
                          "its starting model (train.init_from)")
    data = json.loads(path.read_text())["groups"]
    out = {}
    for name, pairs in groups.items():
        if name not in data:
            raise ConfigError(f"{path} has no communities for group {name!r}")
        if data[name]["fingerprint"] != fingerprint(pairs):
            raise ConfigError(f"{path}: group {name!r} has other pairs than the communities were built for")
        out[name] = data[name]["communities"]
    return out


def communities_path(cfg: Any) -> Path:
    from omniret.training.trainer import run_dir_of

    return Path(cfg.train.b3_file) if cfg.train.b3_file else run_dir_of(cfg) / B3_FILE


def prepare_stage(cfg: Any) -> Path:
    """Build the stage's communities with its starting model (train.init_from, else model.*), unless a
    file built for the same pairs exists (a resumed stage keeps its batches)."""
    from omniret.config import OmniretConfig, apply_overrides
    from omniret.data.mixing import load_mixture
    from omniret.models.embedder import Embedder
    from omniret.training.trainer import stage_model

    path = communities_path(cfg)
    mixture, _ = load_mixture(cfg.data)
    if path.is_file():
        try:
            load_communities(path, mixture.groups)
            return path
        except ConfigError as exc:
            log.info("b3: rebuilding %s: %s", path, exc)
    data = cfg.model_dump()
    if cfg.train.init_from:
        apply_overrides(data, stage_model(cfg.train.init_from))
    else:
        log.warning("b3: no train.init_from; ranking with model.* (B3 ranks with a model trained without "
                    "hard negatives)")
    ranker = OmniretConfig.model_validate(data)
    from omniret.reasoning.attach import attach_to_pairs

    attach_to_pairs(ranker, [p for pairs in mixture.groups.values() for p in pairs])  # TTE_t ranks with ECR
    embedder = Embedder.from_config(ranker)
    embedder.embed_cfg = embedder.embed_cfg.model_copy(update={"progress": False})
    return save_communities(path, build_communities(ranker, mixture.groups, embedder))

"""Embed many evaluation sets with Ray Data: one dataset of every query and candidate, embedded in
batches by a pool of embedder actors (one model copy each), results gathered back per set.

:class:`EmbedBatch` is the callable class ``map_batches`` runs; it is plain library code and can be
called without Ray. Items travel as JSON :class:`~omniret.data.schema.Side` records with absolute
paths, and the configuration travels as ``model_dump()`` with the checkpoint path resolved here, so
actors on other machines load the same model.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np

from omniret.cluster import ensure_ray
from omniret.config import OmniretConfig
from omniret.data.schema import Side
from omniret.eval.dataset import EvalDataset
from omniret.eval.embedding import Embedded, EmbeddedSet, embed_sides, item_names

log = logging.getLogger(__name__)


class EmbedBatch:
    """``map_batches`` callable: rows {key, name, side (JSON)} -> {key, vector, ok, error}."""

    def __init__(self, config: dict[str, Any]):
        from omniret.models.embedder import Embedder

        self.embedder = Embedder.from_config(OmniretConfig.model_validate(config))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sides = [Side.from_dict(json.loads(s)) for s in batch["side"]]
        embedded = embed_sides(self.embedder, sides, [str(n) for n in batch["name"]])
        errors = [embedded.errors.get(i, "") for i in range(len(sides))]
        return {"key": batch["key"], "vector": embedded.vectors, "ok": embedded.ok,
                "error": np.array(errors, dtype=object)}


def resolved_config(cfg: OmniretConfig) -> OmniretConfig:
    """A copy whose model path is absolute (the tiny model is built here if needed), for remote actors."""
    from omniret.models.backbone import checkpoint_path

    out = cfg.model_copy(deep=True)
    out.model.path = str(checkpoint_path(cfg.model).resolve())
    out.embed.progress = False
    return out


def embed_with_ray(cfg: OmniretConfig, datasets: list[EvalDataset]) -> dict[str, EmbeddedSet]:
    import ray
    import ray.data

    ensure_ray(cfg.eval.ray_num_cpus)
    ray.data.DataContext.get_current().enable_progress_bars = False
    rows, sizes = [], {}
    for d, ds in enumerate(datasets):
        for role, sides in (("query", ds.queries), ("candidate", ds.candidates)):
            sizes[(d, role)] = len(sides)
            for i, (side, name) in enumerate(zip(sides, item_names(ds, role), strict=True)):
                rows.append({"key": f"{d}/{role}/{i}", "name": name, "side": json.dumps(side.to_dict())})
    log.info("embedding %d items of %d datasets with %d Ray actor(s)", len(rows), len(datasets), cfg.eval.actors)
    out = ray.data.from_items(rows).map_batches(
        EmbedBatch, fn_constructor_kwargs={"config": resolved_config(cfg).model_dump()},
        batch_size=cfg.eval.batch_rows, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=cfg.eval.actors))
    parts: dict[tuple[int, str], dict[int, tuple[np.ndarray, bool, str]]] = {k: {} for k in sizes}
    for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
        for key, vector, ok, error in zip(batch["key"], batch["vector"], batch["ok"], batch["error"], strict=True):
            d, role, i = str(key).split("/")
            parts[(int(d), role)][int(i)] = (vector, bool(ok), str(error))
    result = {}
    for d, ds in enumerate(datasets):
        q, c = (_assemble(parts[(d, role)], sizes[(d, role)]) for role in ("query", "candidate"))
        result[ds.name] = EmbeddedSet(q, c)
    return result


def _assemble(part: dict[int, tuple[np.ndarray, bool, str]], n: int) -> Embedded:
    if len(part) != n:
        raise RuntimeError(f"Ray Data returned {len(part)} of {n} embeddings")
    vectors = np.stack([part[i][0] for i in range(n)]).astype(np.float32) if n else np.zeros((0, 0), np.float32)
    return Embedded(vectors, np.array([part[i][1] for i in range(n)], dtype=bool),
                    {i: part[i][2] for i in range(n) if part[i][2]})

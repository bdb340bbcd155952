"""The embedder stage: a callable class for ``map_batches`` on an actor pool, one model per actor.

The model loads on the first batch that has something to embed, so a run that finds everything
already stored never loads it. Within a batch, items are grouped by token budget
(``embed.batch_tokens``) by the embedder itself. Any error stays with its own item: an item the
model cannot take (too many tokens, media that fails to patchify, a row that cannot be rebuilt)
becomes a failed row, and when the model fails on a batch as a whole, its items are embedded one by
one so that only the culprit fails (:func:`omniret.models.isolation.embed_isolated`).
"""

from __future__ import annotations

import datetime as dt
import logging
from functools import partial
from typing import Any

import pyarrow as pa
from PIL import Image

from omniret.config import OmniretConfig
from omniret.ingest import rows
from omniret.ingest.expand import MAX_REASON, frames_of
from omniret.items import Item
from omniret.models.isolation import embed_isolated, reason_of

log = logging.getLogger(__name__)


def model_tag(cfg: OmniretConfig) -> str:
    """Name of the vectors' model as stored in the table (:func:`omniret.models.backbone.model_tag`)."""
    from omniret.models.backbone import model_tag as tag

    return tag(cfg.model, cfg.embed.dimensions)


def multivector_spec(cfg: OmniretConfig) -> tuple[int, str] | None:
    """(K, source) of the multivector column ingest writes; None when ``index.multivector`` is none."""
    if cfg.index.multivector == "none":
        return None
    return cfg.index.multivector_k, cfg.index.multivector_source


def model_dim(cfg: OmniretConfig) -> int:
    """Vector size, read from the checkpoint's config (no weights are loaded)."""
    if cfg.embed.dimensions:
        return cfg.embed.dimensions
    from transformers import AutoConfig

    from omniret.models.backbone import checkpoint_path

    config = AutoConfig.from_pretrained(checkpoint_path(cfg.model))
    return int(getattr(config, "text_config", config).hidden_size)


def row_to_item(row: dict[str, Any]) -> Item:
    """Rebuild the item a work row describes, from the media decoded by the expansion stage.

    A page becomes its rendered image plus its text, exactly what ``Item(page=PageRef(...))``
    encodes to; a video becomes its sampled frames, what ``Item(video=VideoRef(...))`` reads.
    """
    name = f"{row['source_uri']} {row['unit']}"
    if row["modality"] == "image":
        return Item(images=[row["payload"]], name=name)
    if row["modality"] == "page":
        _, h, w = row["frames_shape"]
        image = Image.frombytes("RGB", (w, h), row["payload"])
        return Item(images=[image], text=row.get("text") or None, name=name)
    if row["modality"] == "video":
        import numpy as np

        from omniret.media.video import VideoFrames

        frames = VideoFrames(frames=frames_of(row), timestamps=np.asarray(row["timestamps"], dtype=np.float64),
                             fps=float(row["fps"]), start=float(row["t_start"]), end=float(row["t_end"]))
        return Item(video=frames, name=name)
    raise ValueError(f"unknown modality {row['modality']!r}")


class EmbedBatch:
    """``map_batches`` callable: work rows -> embedded rows (vector set, media dropped)."""

    def __init__(self, config: dict[str, Any], model: str):
        self.cfg = OmniretConfig.model_validate(config)
        self.model = model
        self._embedder: Any = None
        self.embedded = 0

    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            from omniret.models.embedder import Embedder

            self._embedder = Embedder.from_config(self.cfg)
        return self._embedder

    def __call__(self, batch: pa.Table) -> pa.Table:
        payload = {f.name for f in rows.PAYLOAD_FIELDS}
        keep = [c for c in batch.column_names if c not in payload]
        out = batch.select(keep).to_pylist()
        pending = [i for i, status in enumerate(batch["status"].to_pylist()) if status == rows.PENDING]
        if pending:
            self._embed(batch.take(pending).to_pylist(), [out[i] for i in pending])
        return rows.table(out, rows.EMBEDDED_SCHEMA)

    def _embed(self, work: list[dict[str, Any]], out: list[dict[str, Any]]) -> None:
        multi = multivector_spec(self.cfg)
        vectors, errors = embed_isolated(self.embedder, [partial(row_to_item, row) for row in work],
                                         self.cfg.embed.dimensions, multi)
        now = dt.datetime.now(dt.timezone.utc)
        for i, (target, vector) in enumerate(zip(out, vectors, strict=True)):
            if i in errors:
                target.update(status=rows.FAILED, stage="embed", reason=reason_of(errors[i])[:MAX_REASON])
            else:
                if multi is not None:  # the pooled vector first, then the K token states
                    vector, tokens = vector[0], vector[1:]
                    target["multivector"] = tokens.tolist()
                target.update(status=rows.EMBEDDED, vector=vector.tolist(), model=self.model, created_at=now)
                self.embedded += 1

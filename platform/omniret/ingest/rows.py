"""The rows that flow through the ingest pipeline, and their statuses.

Every stage passes every row on, so the driver sees one result per file and per item: what was
planned, skipped, written or failed (with the stage and reason). Rows that need no work carry no
media, so passing them through the embedder and the writer costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

# Statuses, in pipeline order.
PLANNED = "planned"  # one per readable file: ``n`` = how many items (pages, clips, ...) it has
SKIPPED = "skipped"  # one per file with items already in the table: ``n`` = how many
PENDING = "pending"  # one per item to embed, with its decoded media in ``payload``
EMBEDDED = "embedded"  # PENDING after the embedder: ``vector`` set, ``payload`` dropped
WRITTEN = "written"  # EMBEDDED after the writer committed it
FAILED = "failed"  # one per file or item that could not be used: ``stage`` and ``reason`` say why

# Stages that can fail, for reports.
STAGES = ("discover", "read", "classify", "probe", "decode", "embed", "write")

_KEY_FIELDS = [
    pa.field("status", pa.string()),
    pa.field("stage", pa.string()),
    pa.field("reason", pa.string()),
    pa.field("n", pa.int64()),
    pa.field("id", pa.string()),
    pa.field("source_uri", pa.string()),
    pa.field("sha256", pa.string()),
    pa.field("unit", pa.string()),
    pa.field("modality", pa.string()),
]
_ITEM_FIELDS = [
    pa.field("page", pa.int32()),
    pa.field("t_start", pa.float64()),
    pa.field("t_end", pa.float64()),
    pa.field("text", pa.string()),
    pa.field("thumbnail", pa.binary()),
]
PAYLOAD_FIELDS = [
    pa.field("payload", pa.large_binary()),  # encoded image file, or raw RGB pixels (pages, frames)
    pa.field("payload_kind", pa.string()),  # "encoded" | "rgb"
    pa.field("frames_shape", pa.list_(pa.int32())),  # (T, H, W) of raw RGB pixels
    pa.field("timestamps", pa.list_(pa.float64())),  # seconds of each video frame
    pa.field("fps", pa.float64()),  # sampling rate achieved for the frames
]

#: Rows leaving the expansion stage.
WORK_SCHEMA = pa.schema(_KEY_FIELDS + _ITEM_FIELDS + PAYLOAD_FIELDS)
#: Rows leaving the embedder: media dropped, vector and model added.
EMBEDDED_SCHEMA = pa.schema(_KEY_FIELDS + _ITEM_FIELDS + [
    pa.field("vector", pa.list_(pa.float32())),
    pa.field("multivector", pa.list_(pa.list_(pa.float32()))),  # K vectors, with index.multivector only
    pa.field("model", pa.string()),
    pa.field("created_at", pa.timestamp("us", tz="UTC")),
])
#: Rows leaving the writer: what the driver counts.
RESULT_SCHEMA = pa.schema(_KEY_FIELDS)


def table(records: Sequence[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows as an Arrow table of ``schema``; missing keys become nulls."""
    return pa.Table.from_pylist(list(records), schema=schema)


def failure(uri: str, stage: str, reason: str, *, unit: str | None = None, sha256: str | None = None,
            item_id: str | None = None) -> dict[str, Any]:
    return {"status": FAILED, "stage": stage, "reason": reason, "n": 1, "source_uri": uri, "unit": unit,
            "sha256": sha256, "id": item_id}

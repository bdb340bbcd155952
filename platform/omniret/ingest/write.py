"""The writer stage: a callable class for ``map_batches`` on a small actor pool.

Each call commits one large batch with ``merge_insert`` on ``id``: few writers and few commits
keep LanceDB's optimistic commits from conflicting, and an id written twice (a retried task, a
re-run after a crash) replaces its row instead of duplicating it. Whatever was committed before a
crash stays; the next run finds those ids and skips them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from omniret.config import IndexConfig
from omniret.index.schema import MULTIVECTOR, VECTOR, multivector_of
from omniret.ingest import rows


class WriteBatch:
    """``map_batches`` callable: embedded rows -> result rows (status ``written`` or ``failed``)."""

    def __init__(self, index: dict[str, Any]):
        from omniret.index.store import IndexStore

        self.store = IndexStore(IndexConfig.model_validate(index), fresh=True)

    def __call__(self, batch: pa.Table) -> pa.Table:
        embedded = pc.equal(batch["status"], rows.EMBEDDED)
        ready = batch.filter(embedded)
        result = batch.select(rows.RESULT_SCHEMA.names)
        if ready.num_rows == 0:
            return result
        try:
            self.store.upsert(to_items(ready, self.store.table.schema))
            status, stage, reason = rows.WRITTEN, None, None
        except Exception as exc:  # the table refused the batch: report every row, keep the run going
            status, stage, reason = rows.FAILED, "write", f"{type(exc).__name__}: {exc}"[:500]
        return _set_where(result, embedded, status=status, stage=stage, reason=reason)


def to_items(embedded: pa.Table, schema: pa.Schema) -> pa.Table:
    """Embedded work rows as rows of the items table (fixed-size vectors, schema column order)."""
    dim = schema.field(VECTOR).type.list_size
    vectors = pc.list_flatten(embedded[VECTOR])
    if len(vectors) != dim * embedded.num_rows:
        raise ValueError(f"vectors do not all have {dim} dimensions")
    columns = {name: embedded[name] for name in schema.names if name not in (VECTOR, MULTIVECTOR)}
    columns[VECTOR] = pa.FixedSizeListArray.from_arrays(vectors.combine_chunks().cast(pa.float32()), dim)
    spec = multivector_of(schema)
    if spec is not None:
        columns[MULTIVECTOR] = _multivectors(embedded[MULTIVECTOR].combine_chunks(), spec[0], dim)
    return pa.table([columns[name] for name in schema.names], schema=schema)


def _multivectors(lists: pa.ListArray, k: int, dim: int) -> pa.ListArray:
    """Rows of K vectors as the table's list of fixed-size vectors; any other count is refused."""
    counts = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(lists)
    sizes = pc.list_value_length(flat).to_numpy(zero_copy_only=False)
    if lists.null_count or flat.null_count or (counts != k).any() or (sizes != dim).any():
        raise ValueError(f"column {MULTIVECTOR!r}: every row needs {k} vectors of {dim} dimensions")
    inner = pa.FixedSizeListArray.from_arrays(pc.list_flatten(flat).cast(pa.float32()), dim)
    offsets = pa.array(np.arange(len(lists) + 1, dtype=np.int32) * k)
    return pa.ListArray.from_arrays(offsets, inner)


def _set_where(table: pa.Table, mask: pa.ChunkedArray, **values: str | None) -> pa.Table:
    for name, value in values.items():
        column = pc.if_else(mask, pa.scalar(value, pa.string()), table[name])
        table = table.set_column(table.schema.get_field_index(name), name, column)
    return table

"""Multi-vector (late-interaction) search: the K-vector read-outs, MaxSim scores and order from LanceDB
against hand values and a float64 reference, and the errors for queries the table cannot answer."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
import torch

from omniret.config import IndexConfig
from omniret.index.schema import MULTIVECTOR, item_id, items_schema, multivector_of
from omniret.index.store import IndexStore, StoreError
from omniret.models.multivector import token_states


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_store(tmp_path, multi: np.ndarray | None, dim: int, texts: list[str] | None = None) -> IndexStore:
    """A table of one row per item; ``multi`` (N, K, D) fills the multivector column when given."""
    n = 3 if multi is None else len(multi)
    spec = None if multi is None else (multi.shape[1], "segments")
    schema = items_schema(dim, "m", spec)
    now = dt.datetime.now(dt.timezone.utc)
    records = []
    for i in range(n):
        sha = f"{i:064x}"
        record = {"id": item_id(sha, "image"), "source_uri": f"/d/{i}.png", "sha256": sha, "modality": "image",
                  "text": texts[i] if texts else None,
                  "vector": unit(np.ones(dim) + i).tolist(), "model": "m", "created_at": now}
        if multi is not None:
            record[MULTIVECTOR] = multi[i].tolist()
        records.append(record)
    store = IndexStore(IndexConfig(uri=str(tmp_path / "db"), read_consistency_s=0))
    store.create(dim, "m", spec)
    store.upsert(pa.Table.from_pylist(records, schema=schema))
    return store


def test_segments_are_means_of_equal_runs_and_padding_never_counts():
    hidden = torch.arange(2 * 6 * 2, dtype=torch.float32).reshape(2, 6, 2)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])  # the second row is left-padded
    out = token_states(hidden, mask, 3, "segments")
    # Row 0: positions (0,1), (2,3), (4,5); row 1: attended positions 2..5 -> runs (2), (3), (4,5).
    h = hidden.double().numpy()
    expected = np.array([[h[0, 0:2].mean(0), h[0, 2:4].mean(0), h[0, 4:6].mean(0)],
                         [h[1, 2], h[1, 3], h[1, 4:6].mean(0)]])
    assert np.allclose(out.numpy(), expected)
    # Fewer positions than K: every vector is one position's state, none is empty.
    short = token_states(hidden[:1], torch.tensor([[0, 0, 0, 0, 1, 1]]), 3, "segments")
    assert np.allclose(short[0].numpy(), h[0, [4, 4, 5]])


def test_last_positions_repeat_the_first_when_the_input_is_short():
    hidden = torch.arange(2 * 5 * 2, dtype=torch.float32).reshape(2, 5, 2)
    mask = torch.tensor([[1, 1, 1, 1, 0], [0, 0, 0, 1, 1]])  # right-padded, left-padded
    out = token_states(hidden, mask, 3, "last").numpy()
    assert np.array_equal(out[0], hidden[0, [1, 2, 3]].numpy())
    assert np.array_equal(out[1], hidden[1, [3, 3, 4]].numpy())
    with pytest.raises(ValueError, match="multi-vector source"):
        token_states(hidden, mask, 3, "middle")


def test_maxsim_score_on_a_hand_example(tmp_path):
    docs = np.array([[[1, 0, 0], [0, 1, 0]],          # A
                     [[0.6, 0.8, 0], [0, 0, 1]]],     # B
                    dtype=np.float32)
    query = np.array([[1, 0, 0], [0, 0.6, 0.8]], dtype=np.float32)
    # A: max(1, 0) + max(0, 0.6) = 1.6;  B: max(0.6, 0) + max(0.48, 0.8) = 1.4
    hits = make_store(tmp_path, docs, dim=3).search(multivector=query, k=2)
    assert [h["source_uri"] for h in hits] == ["/d/0.png", "/d/1.png"]
    assert [h["score"] for h in hits] == pytest.approx([1.6, 1.4], abs=1e-5)


def test_lancedb_order_equals_a_float64_maxsim_reference(tmp_path):
    rng = np.random.default_rng(3)
    docs = unit(rng.normal(size=(40, 4, 16))).astype(np.float32)
    store = make_store(tmp_path, docs, dim=16)
    for q in range(5):
        query = unit(rng.normal(size=(4, 16))).astype(np.float32)
        reference = np.einsum("kd,njd->nkj", query.astype(np.float64), docs.astype(np.float64)).max(-1).sum(-1)
        hits = store.search(multivector=query, k=10, with_vector=True)
        assert [h["source_uri"] for h in hits] == [f"/d/{i}.png" for i in np.argsort(-reference)[:10]], q
        assert [h["score"] for h in hits] == pytest.approx(np.sort(reference)[::-1][:10], abs=1e-5)
        assert np.allclose(hits[0][MULTIVECTOR], docs[np.argmax(reference)])


def test_multivector_queries_the_table_cannot_answer_name_the_column(tmp_path):
    plain = make_store(tmp_path / "plain", None, dim=4)
    with pytest.raises(StoreError, match="no 'multivector' column"):
        plain.search(multivector=np.ones((2, 4)), k=1)
    store = make_store(tmp_path / "multi", unit(np.ones((3, 2, 4))), dim=4)
    with pytest.raises(StoreError, match="'multivector' column must be 2 vectors of 4 dimensions"):
        store.search(multivector=np.ones((3, 4)), k=1)  # another K
    with pytest.raises(StoreError, match="'multivector' column must be 2 vectors"):
        store.search(multivector=np.ones((2, 5)), k=1)
    with pytest.raises(ValueError, match="not both"):
        store.search(np.ones(4), multivector=np.ones((2, 4)), k=1)
    # An ingest that would write another K, or none, into the table is refused before any work.
    with pytest.raises(StoreError, match="column 'multivector' has 2 vectors per row"):
        store.create(4, "m", (3, "segments"))
    with pytest.raises(StoreError, match="column 'multivector' has no such column"):
        plain.create(4, "m", (2, "segments"))
    assert multivector_of(store.table.schema) == (2, "segments") and multivector_of(plain.table.schema) is None


def test_the_multivector_column_gets_its_own_ann_index_and_agrees_with_exact_search(tmp_path):
    rng = np.random.default_rng(5)
    docs = unit(rng.normal(size=(300, 2, 16))).astype(np.float32)
    store = make_store(tmp_path, docs, dim=16)
    store.cfg = store.cfg.model_copy(update={"vector_index_min_rows": 256})
    done = store.maintain()
    assert any("IvfPq multivector index over 300 rows" in d for d in done)
    assert any("IvfPq vector index over 300 rows" in d for d in done)
    assert {tuple(ix["columns"]) for ix in store.index_status()["indexes"]} >= {("vector",), ("multivector",)}
    for row in (7, 123, 299):
        ann = store.search(multivector=docs[row], k=3)
        exact = store.search(multivector=docs[row], k=3, exact=True)
        assert ann[0]["source_uri"] == exact[0]["source_uri"] == f"/d/{row}.png"
        assert ann[0]["score"] == pytest.approx(2.0, abs=1e-4) and exact[0]["score"] == pytest.approx(2.0, abs=1e-4)


@pytest.mark.parametrize(("multi", "ok"), [([[1, 0], [0, 1]], True), ([[1, 0]], False), ([[1, 0], [0, 1, 0]], False),
                                           ([[1, 0, 0], [1]], False), (None, False)])
def test_the_writer_takes_exactly_k_vectors_of_the_tables_dimension(multi, ok):
    from omniret.ingest import rows
    from omniret.ingest.write import to_items

    embedded = rows.table([{"status": rows.EMBEDDED, "id": item_id("0" * 64, "image"), "source_uri": "/x.png",
                            "sha256": "0" * 64, "modality": "image", "vector": [0.6, 0.8], "multivector": multi,
                            "model": "m", "created_at": dt.datetime.now(dt.timezone.utc)}], rows.EMBEDDED_SCHEMA)
    schema = items_schema(2, "m", (2, "segments"))
    if ok:
        assert to_items(embedded, schema)[MULTIVECTOR].to_pylist() == [[[1.0, 0.0], [0.0, 1.0]]]
    else:
        with pytest.raises(ValueError, match="'multivector': every row needs 2 vectors of 2 dimensions"):
            to_items(embedded, schema)


def test_hybrid_search_fuses_maxsim_with_full_text(tmp_path):
    docs = np.array([[[1, 0, 0], [0, 1, 0]], [[0, 0, 1], [0, 1, 0]], [[0.6, 0.8, 0], [0, 0, 1]]], dtype=np.float32)
    store = make_store(tmp_path, docs, dim=3, texts=["a cat", "an invoice from May", "a dog"])
    store.maintain()  # the full-text index
    query = np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32)  # MaxSim: row 0 = 2.0, row 2 = 1.6, row 1 = 1.0
    assert [h["source_uri"] for h in store.search(multivector=query, k=3)] == ["/d/0.png", "/d/2.png", "/d/1.png"]
    hybrid = store.search(text="invoice", multivector=query, k=3)
    # RRF (k = 60): row 1 is first by text and third by MaxSim, 1/61 + 1/63; row 0 first by MaxSim only, 1/61;
    # row 2 second by MaxSim only, 1/62.
    assert [h["source_uri"] for h in hybrid] == ["/d/1.png", "/d/0.png", "/d/2.png"]
    assert [h["score"] for h in hybrid] == pytest.approx([1 / 61 + 1 / 63, 1 / 61, 1 / 62], rel=1e-5)

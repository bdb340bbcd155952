"""The LanceDB store on a real table in tmp_path: schema, upserts, deletes, index lifecycle, search."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from omniret.config import IndexConfig
from omniret.index.schema import LIGHT_COLUMNS, item_id, items_schema, unit_key
from omniret.index.store import IndexStore, StoreError, build_filter, sub_vectors

DIM = 16


def sha(n: int) -> str:
    return f"{n:064x}"


def rows(ids: list[tuple[int, str]], dim: int = DIM, seed: int = 0, texts: dict | None = None,
         uri: str = "/data/f{n}.pdf") -> pa.Table:
    """Rows for (file number, unit) pairs with random unit vectors."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(len(ids), dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    texts = texts or {}
    records = []
    for (n, unit), vector in zip(ids, vectors, strict=True):
        modality = "page" if unit.startswith("page") else unit.split("=")[0].replace("clip", "video")
        records.append({
            "id": item_id(sha(n), unit), "source_uri": uri.format(n=n), "sha256": sha(n),
            "modality": modality, "page": int(unit.split("=")[1]) if unit.startswith("page") else None,
            "t_start": None, "t_end": None, "text": texts.get((n, unit)), "thumbnail": b"\xff\xd8jpeg",
            "vector": vector.tolist(), "model": "m", "created_at": dt.datetime.now(dt.timezone.utc)})
    return pa.Table.from_pylist(records, schema=items_schema(dim, "m"))


@pytest.fixture
def store(tmp_path):
    s = IndexStore(IndexConfig(uri=str(tmp_path / "db"), vector_index_min_rows=256), fresh=True)
    s.create(DIM, "m")
    return s


def test_create_refuses_another_model_or_dimension(store, tmp_path):
    again = IndexStore(IndexConfig(uri=str(tmp_path / "db")))
    again.create(DIM, "m")  # same model: opens
    with pytest.raises(StoreError, match="'other'"):
        again.create(DIM, "other")
    with pytest.raises(StoreError, match="32-d"):
        again.create(32, "m")
    assert IndexStore(IndexConfig(uri=str(tmp_path / "empty"))).search(np.ones(DIM), k=3) == []


def test_upsert_is_idempotent_and_dedupes_a_batch(store):
    data = rows([(1, "page=0"), (1, "page=1"), (2, "image")])
    assert store.upsert(data) == (3, 0)
    assert store.upsert(data) == (0, 3)  # same ids: replaced, not added
    doubled = pa.concat_tables([rows([(3, "image")]), rows([(3, "image")], seed=1)])
    assert store.upsert(doubled) == (1, 0)
    assert store.count() == 4
    assert store.existing_ids([item_id(sha(1), "page=1"), item_id(sha(9), "image")]) == {
        item_id(sha(1), "page=1")}


def test_delete_repoint_and_duplicate_repair(store):
    store.upsert(rows([(1, "page=0"), (1, "page=1"), (2, "image")]))
    assert store.delete_ids([item_id(sha(1), "page=0"), "missing"]) == 1
    store.repoint(sha(2), "/moved/f2.png")
    assert store.get([item_id(sha(2), "image")])[0]["source_uri"] == "/moved/f2.png"
    store.table.add(rows([(2, "image")], seed=5))  # a plain append bypasses the upsert: a duplicate
    assert store.count() == 3
    assert store.drop_duplicates() == 1
    ids = store.scan(["id"])["id"].to_pylist()
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 2


def test_duplicate_repair_keeps_the_newest_copy_and_never_rewrites_it(store):
    store.upsert(rows([(1, "image"), (2, "image")]))
    newest = rows([(1, "image"), (2, "image")], seed=7)
    store.table.add(newest)  # two more copies, written later
    version = store.table.version
    assert store.drop_duplicates() == 2 and store.table.version == version + 1  # one delete commit
    kept = {r["id"]: r["vector"] for r in store.scan(["id", "vector"]).to_pylist()}
    assert {i: list(v) for i, v in kept.items()} == {
        r["id"]: pytest.approx(r["vector"]) for r in newest.to_pylist()}


def test_a_row_address_read_before_a_compaction_matches_no_row_after_it(store):
    """What the duplicate repair relies on: a stale ``_rowid`` deletes nothing rather than another row."""
    for n in range(3):
        store.upsert(rows([(n, "image")], seed=n))  # three fragments
    old = store.table.search().select(["id"]).with_row_id(True).limit(None).to_arrow()["_rowid"].to_pylist()
    store.table.optimize()  # compaction rewrites the fragments under new ids
    store.table.delete(f"_rowid IN ({', '.join(map(str, old))})")
    assert store.count() == 3


def _race(uri: str, seed: int) -> None:
    store = IndexStore(IndexConfig(uri=uri), fresh=True)
    for r in range(8):
        store.upsert(rows([(100 * r + i, "image") for i in range(4)], seed=seed))
        store.drop_duplicates()


def test_concurrent_writers_and_repairs_lose_no_id(store, tmp_path):
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")  # LanceDB's runtime does not survive fork
    workers = [spawn.Process(target=_race, args=(store.cfg.uri, seed)) for seed in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    store.drop_duplicates()
    ids = store.scan(["id"])["id"].to_pylist()
    assert len(ids) == len(set(ids)) and set(ids) == {item_id(sha(100 * r + i), "image")
                                                      for r in range(8) for i in range(4)}


def test_errors_are_replaced_per_file(store):
    store.replace_errors([], [{"uri": "/a.jpg", "stage": "decode", "reason": "corrupt"},
                              {"uri": "/b.mp4", "unit": "clip=0.000-4.000", "stage": "decode", "reason": "x"}])
    store.replace_errors(["/a.jpg"], [])  # /a.jpg is fine now
    errors = store.errors().to_pylist()
    assert [(e["uri"], e["unit"], e["stage"]) for e in errors] == [("/b.mp4", "clip=0.000-4.000", "decode")]


def test_scalar_and_text_indexes_at_once_vector_index_only_above_threshold(store):
    store.upsert(rows([(n, "image") for n in range(100)]))
    done = store.maintain()
    assert done == ["created btree index on id", "created bitmap index on modality", "created fts index on text"]
    assert store.maintain() == []  # nothing unindexed, nothing to do
    assert not any(ix["columns"] == ["vector"] for ix in store.index_status()["indexes"])
    store.upsert(rows([(n, "image") for n in range(100, 300)], seed=1))
    done = store.maintain()
    assert any("IvfPq vector index over 300 rows" in d for d in done)
    status = {ix["columns"][0]: ix for ix in store.index_status()["indexes"]}
    assert status["vector"]["indexed_rows"] == 300 and status["id"]["unindexed_rows"] == 0


def test_optimize_once_unindexed_rows_pass_the_fraction(store):
    store.upsert(rows([(n, "image") for n in range(100)]))
    store.maintain()
    store.upsert(rows([(n, "image") for n in range(100, 105)], seed=1))  # 5 of 105: under 10%
    assert store.maintain() == []
    store.upsert(rows([(n, "image") for n in range(105, 130)], seed=2))  # 30 of 130
    done = store.maintain()
    assert len(done) == 1 and done[0].startswith("optimized")
    assert all(ix["unindexed_rows"] == 0 for ix in store.index_status()["indexes"])


def test_vector_search_finds_the_row_and_leaves_heavy_columns_out(store):
    data = rows([(n, "image") for n in range(50)], uri="/data/{n}.png")
    store.upsert(data)
    query = np.asarray(data["vector"][17].as_py())
    hits = store.search(query, k=5)
    assert hits[0]["id"] == item_id(sha(17), "image") and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert set(hits[0]) == {*LIGHT_COLUMNS, "score"}
    full = store.search(query, k=1, with_vector=True, with_thumbnail=True)[0]
    assert full["thumbnail"] == b"\xff\xd8jpeg" and np.allclose(full["vector"], query)
    assert store.get([item_id(sha(3), "image"), "nope", item_id(sha(1), "image")], with_thumbnail=False)[1][
        "id"] == item_id(sha(1), "image")
    with pytest.raises(ValueError, match="8 dimensions"):
        store.search(np.ones(8))


def test_filters_by_modality_and_source_prefix(store):
    store.upsert(rows([(n, "image") for n in range(10)], uri="/photos/{n}.png"))
    store.upsert(rows([(n, "page=0") for n in range(10, 20)], uri="/docs/{n}.pdf", seed=1))
    store.upsert(rows([(n, "page=0") for n in range(20, 25)], uri="/docs/it's/{n}.pdf", seed=2))
    query = np.ones(DIM, dtype=np.float32)
    assert {h["modality"] for h in store.search(query, k=50, modality="page")} == {"page"}
    assert len(store.search(query, k=50, modality=["page", "image"])) == 25
    assert {h["source_uri"][:7] for h in store.search(query, k=50, source_prefix="/photos/")} == {"/photos"}
    assert len(store.search(query, k=50, source_prefix="/docs/it's/")) == 5  # quotes are escaped
    with pytest.raises(ValueError, match="unknown modality"):
        build_filter(modality="audio")


def test_full_text_and_hybrid_search(store):
    texts = {(1, "page=0"): "annual report on zebras", (1, "page=1"): "quarterly numbers",
             (2, "page=0"): "zebras and giraffes and zebras"}
    data = rows([(1, "page=0"), (1, "page=1"), (2, "page=0"), (3, "image"), (4, "image")], texts=texts)
    store.upsert(data)
    with pytest.raises(StoreError, match="full-text index"):
        store.search(text="zebras")
    store.maintain()
    found = store.search(text="zebras", k=10)
    assert {h["id"] for h in found} == {item_id(sha(1), "page=0"), item_id(sha(2), "page=0")}
    # Hybrid: the query vector is another row's; the full-text match still ranks first.
    image_vector = np.asarray(data["vector"][3].as_py())
    hybrid = store.search(image_vector, text="giraffes", k=5)
    assert hybrid[0]["id"] == item_id(sha(2), "page=0")
    assert hybrid[1]["id"] == item_id(sha(3), "image")
    assert len(hybrid) == 5 and "vector" not in hybrid[0]
    assert store.search(image_vector, text="giraffes", k=5, modality="image")[0]["id"] == item_id(sha(3), "image")


def test_ann_search_agrees_with_exact_search(store):
    data = rows([(n, "image") for n in range(600)])
    store.upsert(data)
    store.maintain()
    query = np.asarray(data["vector"][42].as_py())
    ann = [h["id"] for h in store.search(query, k=1, nprobes=64, refine_factor=10)]
    exact = store.search(query, k=10, exact=True)
    assert ann == [exact[0]["id"]] == [item_id(sha(42), "image")]


def test_ids_and_units():
    assert unit_key("page", 3) == "page=3"
    assert unit_key("video") == "video"
    assert unit_key("video", t_start=4, t_end=8.5) == "clip=4.000-8.500"
    assert item_id(sha(1), "image") == sha(1) + ":image"
    with pytest.raises(ValueError):
        item_id("abc", "image")
    with pytest.raises(ValueError):
        unit_key("page")
    assert sub_vectors(64) == 32 and sub_vectors(256) == 64 and sub_vectors(1536) == 192
    assert sub_vectors(100) == 50 and sub_vectors(97) == 1  # always a divisor


def test_int8_vector_index_finds_the_same_first_row_as_exact_search(tmp_path):
    store = IndexStore(IndexConfig(uri=str(tmp_path / "db"), vector_index_min_rows=256, vector_index="ivf_sq",
                                   num_partitions=2), fresh=True)
    store.create(DIM, "m")
    data = rows([(n, "image") for n in range(300)])
    store.upsert(data)
    assert any("IvfSq vector index over 300 rows" in d for d in store.maintain())
    assert any(ix["columns"] == ["vector"] and "SQ" in ix["type"].upper() for ix in store.index_status()["indexes"])
    for n in (5, 123, 299):
        query = np.asarray(data["vector"][n].as_py())
        first, exact = store.search(query, k=1)[0], store.search(query, k=1, exact=True)[0]
        assert first["id"] == exact["id"] == item_id(sha(n), "image")

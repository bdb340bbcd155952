"""The functions Ray workers run, called directly (no Ray): expand -> embed -> write on a real table."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from omniret.index.schema import item_id
from omniret.index.store import IndexStore
from omniret.ingest import rows
from omniret.ingest.embed import EmbedBatch, model_dim, model_tag, multivector_spec, row_to_item
from omniret.ingest.expand import expand_files
from omniret.ingest.write import WriteBatch, to_items
from omniret.items import Item, PageRef, VideoRef
from omniret.media import synth
from omniret.models.embedder import Embedder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    synth.draw_scene([{"shape": "triangle", "color": "green", "x": 40, "y": 40, "size": 50}], size=(80, 80)).save(
        root / "tri.png")
    synth.write_pdf(root / "doc.pdf", ["pelicans on page one", "page two"])
    synth.write_moving_video(root / "v.mp4", shape="circle", color="red", direction="up", num_frames=16,
                             size=(64, 64), fps=8)
    (root / "junk.bin").write_bytes(b"not media at all")
    return root


@pytest.fixture
def cfg(make_config, tmp_path):
    return make_config("qwen2_vl", f"index.uri={tmp_path / 'db'}", "media.pdf_dpi=50", "media.clip_seconds=1.0",
                       "media.video_frames=4")


def run_stages(cfg, files, embed: EmbedBatch) -> pa.Table:
    batch = pa.table({"uri": [str(f) for f in files], "size": [f.stat().st_size for f in files]})
    work = list(expand_files(batch, media=cfg.media.model_dump(), index=cfg.index.model_dump(), thumbnail_px=64))
    embedded = embed(pa.concat_tables(work))
    return WriteBatch(cfg.index.model_dump())(embedded)


def test_stages_write_every_item_once_and_skip_them_next_time(cfg, corpus):
    IndexStore(cfg.index).create(model_dim(cfg), model_tag(cfg))
    files = sorted(corpus.iterdir())
    embed = EmbedBatch(cfg.model_dump(), model_tag(cfg))
    result = run_stages(cfg, files, embed)
    assert result.schema == rows.RESULT_SCHEMA
    status = result["status"].to_pylist()
    assert status.count(rows.WRITTEN) == 5  # 1 image + 2 pages + 2 clips
    assert [r["source_uri"] for r in result.to_pylist() if r["status"] == rows.FAILED] == [str(corpus / "junk.bin")]
    store = IndexStore(cfg.index, fresh=True)
    assert store.count() == 5 and embed.embedded == 5

    again = EmbedBatch(cfg.model_dump(), model_tag(cfg))
    second = run_stages(cfg, files, again)
    assert rows.WRITTEN not in second["status"].to_pylist()
    assert sum(r["n"] for r in second.to_pylist() if r["status"] == rows.SKIPPED) == 5
    assert again._embedder is None  # nothing to embed: the model was never loaded
    assert store.count() == 5


def test_stored_vectors_equal_embedding_the_item_directly(cfg, corpus):
    IndexStore(cfg.index).create(model_dim(cfg), model_tag(cfg))
    run_stages(cfg, [corpus / "doc.pdf", corpus / "v.mp4"], EmbedBatch(cfg.model_dump(), model_tag(cfg)))
    store = IndexStore(cfg.index, fresh=True)
    stored = {row["id"]: row for row in store.scan(["id", "sha256", "vector", "text"]).to_pylist()}
    embedder = Embedder.from_config(cfg)
    page, clip = embedder.encode([Item(page=PageRef(str(corpus / "doc.pdf"), 0)),
                                  Item(video=VideoRef(str(corpus / "v.mp4"), 1.0, 2.0))], progress=False)
    by_unit = {key.split(":")[1]: row for key, row in stored.items()}
    assert np.allclose(by_unit["page=0"]["vector"], page, atol=1e-5)
    assert np.allclose(by_unit["clip=1.000-2.000"]["vector"], clip, atol=1e-5)
    assert by_unit["page=0"]["text"] == "pelicans on page one"


def test_multivector_ingest_stores_the_token_states_of_the_same_forward_pass(make_config, tmp_path, corpus):
    cfg = make_config("qwen2_vl", f"index.uri={tmp_path / 'db'}", "media.pdf_dpi=50", "index.multivector=tokens",
                      "index.multivector_k=4", "index.multivector_source=segments")
    IndexStore(cfg.index).create(model_dim(cfg), model_tag(cfg), multivector_spec(cfg))
    run_stages(cfg, [corpus / "tri.png", corpus / "doc.pdf"], EmbedBatch(cfg.model_dump(), model_tag(cfg)))
    store = IndexStore(cfg.index, fresh=True)
    stored = {r["id"].split(":")[1]: r for r in store.scan(["id", "vector", "multivector"]).to_pylist()}
    embedder = Embedder.from_config(cfg)
    items = [Item(images=[str(corpus / "tri.png")]), Item(page=PageRef(str(corpus / "doc.pdf"), 1))]
    both = embedder.encode(items, progress=False, multivector=(4, "segments"))
    assert both.shape == (2, 5, model_dim(cfg))
    assert np.allclose(both[:, 0], embedder.encode(items, progress=False), atol=1e-5)  # pooled vector unchanged
    for unit, row in zip(["image", "page=1"], both, strict=True):
        assert np.allclose(stored[unit]["vector"], row[0], atol=1e-5)
        assert np.allclose(stored[unit]["multivector"], row[1:], atol=1e-5)
    assert np.allclose(np.linalg.norm(both, axis=-1), 1.0, atol=1e-5)
    hits = store.search(multivector=both[1, 1:], k=3)
    assert hits[0]["page"] == 1 and hits[0]["score"] == pytest.approx(4.0, abs=1e-4)


def test_row_to_item_rebuilds_each_modality(cfg, corpus):
    batch = pa.table({"uri": [str(corpus / "tri.png"), str(corpus / "doc.pdf")], "size": [0, 0]})
    work = pa.concat_tables(expand_files(batch, media=cfg.media.model_dump(), index=cfg.index.model_dump(),
                                         thumbnail_px=64)).to_pylist()
    items = [row_to_item(r) for r in work if r["status"] == rows.PENDING]
    assert items[0].images[0] == (corpus / "tri.png").read_bytes()
    assert items[1].images[0].size == (207, 292) and items[1].text == "pelicans on page one"


def test_an_item_the_model_refuses_fails_alone(make_config, tmp_path, corpus):
    cfg = make_config("qwen2_vl", f"index.uri={tmp_path / 'db'}", "model.max_length=48", "media.pdf_dpi=50")
    IndexStore(cfg.index).create(model_dim(cfg), model_tag(cfg))
    batch = pa.table({"uri": [str(corpus / "doc.pdf"), str(corpus / "tri.png")], "size": [0, 0]})
    work = pa.concat_tables(expand_files(batch, media=cfg.media.model_dump(), index=cfg.index.model_dump(),
                                         thumbnail_px=64))
    out = EmbedBatch(cfg.model_dump(), model_tag(cfg))(work).to_pylist()
    failed = [r for r in out if r["status"] == rows.FAILED]
    assert len(failed) == 2 and all(r["stage"] == "embed" and "max_length" in r["reason"] for r in failed)
    assert {r["unit"] for r in failed} == {"page=0", "page=1"}
    assert [r["unit"] for r in out if r["status"] == rows.EMBEDDED] == ["image"]  # the small image fits


def test_writer_reports_a_refused_batch_instead_of_failing(cfg, corpus):
    IndexStore(cfg.index).create(model_dim(cfg), model_tag(cfg))
    bad = rows.table([{"status": rows.EMBEDDED, "id": item_id("0" * 64, "image"), "source_uri": "/x.png",
                       "sha256": "0" * 64, "modality": "image", "vector": [0.5, 0.5], "model": "m"}],
                     rows.EMBEDDED_SCHEMA)
    out = WriteBatch(cfg.index.model_dump())(bad).to_pylist()
    assert out[0]["status"] == rows.FAILED and out[0]["stage"] == "write" and "dimensions" in out[0]["reason"]
    with pytest.raises(ValueError, match="dimensions"):
        to_items(bad, IndexStore(cfg.index).table.schema)

"""The pair schema, the readers (native, MMEB-train, MMEB-V2 video / visdoc rows, BEIR) and mixing."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from omniret.config import DataConfig
from omniret.data.mixing import cap, load_mixture, mix
from omniret.data.readers import read_beir_pairs, read_pairs
from omniret.data.schema import TASK_GROUPS, Pair, SchemaError, Side, write_pairs
from omniret.items import PageRef, VideoRef
from omniret.media.synth import draw_scene


def _png(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_scene([{"shape": "square", "color": "blue", "x": 16, "y": 16, "size": 20}], size=(32, 32)).save(path)
    return str(path)


def _pair(i: int, dataset: str = "d", task: str = "image_retrieval") -> Pair:
    return Pair(Side(text=f"query {i}"), [Side(text=f"doc {i}")], dataset=dataset, task=task, id=f"{dataset}-{i}")


def test_schema_round_trip_and_items(tmp_path):
    pair = Pair(query=Side(text="make it red", images=["a.png"], instruction="Change it."),
                positives=[Side(video=VideoRef("clip.mp4", 1.0, 3.0))],
                negatives=[Side(page=PageRef("doc.pdf", 2)), Side(images=[b"\x89PNG..."])],
                dataset="mine", task="image_retrieval", id="p1", meta={"k": 1})
    row = pair.to_dict()
    assert row["query"]["modality"] == "image+text" and row["positives"][0]["modality"] == "video"
    again = Pair.from_dict(json.loads(json.dumps(row)))
    assert again == pair and again.task_id == TASK_GROUPS.index("image_retrieval")
    query, positives, negatives = again.to_items(root=tmp_path)
    assert query.images == [str(tmp_path / "a.png")] and query.instruction == "Change it."
    assert positives[0].video.path == str(tmp_path / "clip.mp4") and positives[0].video.start == 1.0
    assert negatives[0].page.page == 2 and negatives[1].images == [b"\x89PNG..."]
    assert Side(text="x").flags == (True, False, False, False)


@pytest.mark.parametrize(("row", "message"), [
    ({"query": {"text": "q"}, "positives": [], "task": "image_qa", "dataset": "d"}, "positives"),
    ({"query": {"text": "q"}, "positives": [{"text": "p"}], "task": "dancing", "dataset": "d"}, "dancing"),
    ({"query": {"text": "q", "colour": 1}, "positives": [{"text": "p"}], "task": "image_qa", "dataset": "d"}, "colour"),
    ({"query": {"text": "q", "modality": "image"}, "positives": [{"text": "p"}], "task": "image_qa", "dataset": "d"},
     "modality"),
    ({"query": {}, "positives": [{"text": "p"}], "task": "image_qa", "dataset": "d"}, "empty"),
    ({"query": {"video": {"path": "v.mp4", "start": 3, "end": 1}}, "positives": [{"text": "p"}],
      "task": "video_qa", "dataset": "d"}, "before end"),
])
def test_schema_names_what_is_wrong(row, message):
    with pytest.raises(SchemaError, match=message):
        Pair.from_dict(row)


def test_native_jsonl_reports_broken_rows_with_file_and_line(tmp_path, caplog):
    image = _png(tmp_path / "img" / "a.png")
    good = _pair(0).to_dict()
    with_image = {**_pair(1).to_dict(), "query": {"images": ["img/a.png"], "modality": "image"}}
    missing = {**_pair(2).to_dict(), "query": {"images": ["img/missing.png"]}}
    bad_task = {**_pair(3).to_dict(), "task": "cooking"}
    path = tmp_path / "pairs.jsonl"
    lines = [json.dumps(good), "{oops", json.dumps(with_image), json.dumps(missing), "", json.dumps(bad_task), "[1]"]
    path.write_text("\n".join(lines) + "\n")
    result = read_pairs(path)
    assert [p.id for p in result.pairs] == ["d-0", "d-1"]
    assert result.pairs[1].query.images == [image]  # resolved against the file's folder
    assert [(Path(p.file).name, p.line) for p in result.problems] == [
        ("pairs.jsonl", 2), ("pairs.jsonl", 4), ("pairs.jsonl", 6), ("pairs.jsonl", 7)]
    assert "invalid JSON" in result.problems[0].reason and "missing.png" in result.problems[1].reason
    assert "cooking" in result.problems[2].reason and "pairs.jsonl:4:" in str(result.problems[1])
    assert result.skipped == 4 and "skipped 4 broken row(s)" in result.summary()
    assert "skipped 4 broken row(s)" in caplog.text


def test_mmeb_train_parquet_with_placeholders(tmp_path):
    root = tmp_path / "MMEB-train"
    _png(root / "images" / "ImageNet_1K" / "cat.png")
    _png(root / "images" / "MSCOCO_t2i" / "car.png")
    rows = {
        "qry": ["<|image_1|>\nRepresent the given image for classification", "<|image_1|> what is it?", "a cat"],
        "qry_image_path": ["images/ImageNet_1K/cat.png", "", ""],
        "pos_text": ["tabby cat", "a cat", ""],
        "pos_image_path": ["", "", ""],
        "neg_text": ["dog", "", ""],
        "neg_image_path": ["", "", ""],
    }
    (root / "ImageNet_1K").mkdir(parents=True)
    pq.write_table(pa.table(rows), root / "ImageNet_1K" / "diverse_instruction-00000-of-00001.parquet")
    (root / "MSCOCO_t2i").mkdir()
    pq.write_table(pa.table({"qry": ["Find me an everyday image that matches the given caption: a red car"],
                             "qry_image_path": [""], "pos_text": ["<|image_1|>\nRepresent the given image."],
                             "pos_image_path": ["images/MSCOCO_t2i/car.png"], "neg_text": [None],
                             "neg_image_path": [None]}),
                   root / "MSCOCO_t2i" / "original-00000-of-00001.parquet")
    result = read_pairs(root)
    cls, t2i = result.pairs
    assert (cls.dataset, cls.task) == ("ImageNet_1K", "image_classification")
    assert cls.query.text == "Represent the given image for classification"
    assert cls.query.images == [str((root / "images/ImageNet_1K/cat.png").resolve())]
    assert cls.positives[0].text == "tabby cat" and cls.negatives[0].text == "dog"
    assert (t2i.dataset, t2i.task, t2i.query.modality) == ("MSCOCO_t2i", "image_retrieval", "text")
    assert t2i.positives[0].text == "Represent the given image." and t2i.positives[0].images
    # row 2 has a placeholder but no image path; row 3 has no positive
    assert [(p.line, p.reason.split(":")[0]) for p in result.problems] == [(2, "qry"), (3, "pos_text / pos_image_path")]


def test_mmeb_v2_video_and_visdoc_rows(tmp_path):
    frames = tmp_path / "frames" / "v1"
    _png(frames / "0.jpg")
    (tmp_path / "clip.mp4").write_bytes(b"")
    _png(tmp_path / "pages" / "p1.png")
    (tmp_path / "doc.pdf").write_bytes(b"%PDF-1.4")
    rows = [{"video_id": "v1", "caption": "a dog runs", "frame_dir": "frames/v1"},
            {"video_id": "v2", "caption": "a cat sits", "video": "clip.mp4"},
            {"caption": "orphan caption"},
            {"query": "revenue in 2020?", "image": "pages/p1.png"},
            {"query": "who signed?", "pdf": "doc.pdf", "page": 3},
            {"query": "bad page", "pdf": "doc.pdf", "page": -1}]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = read_pairs(path)
    tasks = [(p.id, p.task, p.positives[0].modality) for p in result.pairs]
    assert tasks == [("mixed:v1", "video_retrieval", "video"), ("mixed:v2", "video_retrieval", "video"),
                     ("mixed:4", "document_retrieval", "image"), ("mixed:5", "document_retrieval", "page")]
    assert Path(str(result.pairs[0].positives[0].video.path)).is_dir()
    assert result.pairs[3].positives[0].page.page == 3
    assert [p.line for p in result.problems] == [3, 6]
    assert "unrecognised row" in result.problems[0].reason


def test_text_pairs_read_and_bad_lines_are_reported_with_their_line(tmp_path):
    from omniret.data.synthetic.text_pairs import text_pairs

    path = tmp_path / "text.jsonl"
    good = {"query": "who ships?", "positive": "the north site ships", "negatives": ["the south site", "nobody"],
            "instruction": "Find the answer."}
    lines = [json.dumps(good), json.dumps({"query": "q2", "positive": "p2", "negatives": "one negative"}),
             "{not json", json.dumps({"query": "q", "positive": ""}), json.dumps({"query": 5, "positive": "p"}),
             json.dumps({"query": "q", "positive": "p", "negatives": [3]}),
             json.dumps({"query": "q", "positive": "p", "negatives": {"a": 1}}),
             *map(json.dumps, text_pairs(3, seed=1))]
    path.write_text("\n".join(lines) + "\n")
    result = read_pairs(path)
    first, second = result.pairs[:2]
    assert (first.query.text, first.query.instruction, first.dataset, first.task) == (
        "who ships?", "Find the answer.", "text", "document_retrieval")
    assert [s.text for s in first.positives] == ["the north site ships"]
    assert [s.text for s in first.negatives] == ["the south site", "nobody"]
    assert [s.text for s in second.negatives] == ["one negative"] and second.query.instruction is None
    assert all(side.modality == "text" for p in result.pairs for side in [p.query, *p.positives, *p.negatives])
    assert len(result.pairs) == 5 and all(len(p.negatives) == 2 for p in result.pairs[2:])
    assert [(pr.line, pr.reason.split(":")[0]) for pr in result.problems] == [
        (3, "invalid JSON"), (4, "positive"), (5, "query"), (6, "negatives[0]"), (7, "negatives")]


def test_generated_text_pairs_are_the_same_for_a_seed_and_their_positive_answers_the_query():
    from omniret.data.synthetic.text_pairs import text_pairs

    rows = text_pairs(20, seed=4)
    assert rows == text_pairs(20, seed=4) and rows != text_pairs(20, seed=5)
    for row in rows:
        # "... the <site> site ..." and the product name: the positive names both, each negative misses one.
        site = row["query"].split(" the ")[-1].split(" site")[0]
        product = " ".join(row["positive"].split(" at the ")[0].lower().split())
        assert product in row["query"] and f"the {site} site" in row["positive"]
        assert all(product not in n.lower() or f"the {site} site" not in n for n in row["negatives"])


def test_beir_folder_as_training_pairs(tmp_path):
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "a"}\n{"_id": "q2", "text": "b"}\n')
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "alpha"}\n{"_id": "d2", "text": "beta"}\n')
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t1\nq2\td2\t0\n")
    result = read_beir_pairs(tmp_path, dataset="tiny", min_score=2)
    assert [(p.id, [s.text for s in p.positives]) for p in result.pairs] == [("tiny:q1", ["alpha"])]
    assert result.skipped == 1 and "q2" in result.problems[0].reason


def test_caps_weights_and_merged_classification(tmp_path):
    pairs = [_pair(i, "ImageNet_1K", "image_classification") for i in range(10)]
    pairs += [_pair(i, "VOC2007", "image_classification") for i in range(4)]
    pairs += [_pair(i, "MSCOCO_t2i", "image_retrieval") for i in range(6)]
    pairs += [_pair(i, "MSR-VTT", "video_retrieval") for i in range(20)]
    capped = cap(pairs[:10], 3, seed=1)
    assert capped == cap(pairs[:10], 3, seed=1) and len(capped) == 3
    assert [int(p.id.split("-")[-1]) for p in capped] == sorted(int(p.id.split("-")[-1]) for p in capped)

    m = mix(pairs, max_per_dataset=8, caps={"MSR-VTT": 10})
    assert set(m.groups) == {"image_classification", "MSCOCO_t2i", "MSR-VTT"}
    assert m.sources["image_classification"] == ["ImageNet_1K", "VOC2007"]
    assert [len(m.groups[g]) for g in ("image_classification", "MSCOCO_t2i", "MSR-VTT")] == [8 + 4, 6, 10]
    assert m.probabilities["MSR-VTT"] == pytest.approx(10 / 28)

    up = mix(pairs, max_per_dataset=8, caps={"MSR-VTT": 10}, weights={"image_retrieval": 2.0})
    assert up.probabilities["MSCOCO_t2i"] == pytest.approx(12 / 34)
    uniform = mix(pairs, weighting="uniform", merge_classification=False)
    assert len(uniform.groups) == 4 and all(p == pytest.approx(0.25) for p in uniform.probabilities.values())
    with pytest.raises(ValueError, match="weight"):
        mix(pairs, weights={"MSR-VTT": -1})

    write_pairs(tmp_path / "a.jsonl", pairs[:14])
    (tmp_path / "b.jsonl").write_text("not json\n")
    mixture, read = load_mixture(DataConfig(train=[str(tmp_path)]))
    assert read.skipped == 1 and list(mixture.groups) == ["image_classification"]
    assert "ImageNet_1K" in mixture.table()

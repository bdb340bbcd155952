"""MMEB readers (real-layout fixtures), dataset scoring, baselines, and the MMEB aggregation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from omniret.config import EvalConfig
from omniret.data import catalog
from omniret.eval.baselines import chance, text_overlap
from omniret.eval.dataset import score_dataset
from omniret.eval.mmeb import aggregate, discover, load_datasets
from omniret.media.frames import read_frame_dir
from omniret.media.synth import draw_scene, write_pdf


def _png(path: Path, color: str = "red") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_scene([{"shape": "circle", "color": color, "x": 16, "y": 16, "size": 20}], size=(32, 32)).save(path)
    return path


def _jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_aggregation_reproduces_a_hand_computation():
    scores = {"ImageNet-1K": 80.0, "N24News": 60.0, "Place365": 20.0, "OK-VQA": 50.0, "MSR-VTT": 30.0,
              "ViDoRe_arxivqa": 70.0, "ViDoRe_docvqa": 40.0, "VisRAG_ArxivQA": 90.0}
    infos = {name: catalog.lookup(name) for name in scores}
    out = aggregate(scores, infos)
    assert out["meta_tasks"] == pytest.approx({"I-CLS": 160 / 3, "I-QA": 50, "V-RET": 30, "VD-ViDoRe-v1": 55,
                                               "VD-VisRAG": 90})
    assert list(out["meta_tasks"]) == ["I-CLS", "I-QA", "V-RET", "VD-ViDoRe-v1", "VD-VisRAG"]
    assert out["Image"] == pytest.approx((80 + 60 + 20 + 50) / 4)
    assert out["Video"] == pytest.approx(30)
    assert out["VisDoc"] == pytest.approx((70 + 40 + 90) / 3)
    assert out["Overall"] == pytest.approx(440 / 8)  # a plain mean over datasets ...
    assert out["Overall"] != pytest.approx(np.mean(list(out["meta_tasks"].values())))  # ... not over meta-tasks
    assert out["IND"] == pytest.approx((80 + 60 + 50) / 3) and out["OOD"] == pytest.approx(20)
    assert out["counts"] == {"Image": 4, "Video": 1, "VisDoc": 3, "Overall": 8}


def test_catalog_finds_any_spelling():
    assert catalog.lookup("ImageNet_1K").name == "ImageNet-1K"
    assert catalog.lookup("msr-vtt").meta_task == "V-RET"
    assert catalog.lookup("ViDoRe_arxivqa").metric == "ndcg_linear@5"
    assert catalog.lookup("syn_t2i") is None


@pytest.fixture()
def mmeb_root(tmp_path):
    """A miniature of the layout the MMEB download scripts leave, with annotations placed beside it."""
    root = tmp_path / "vlm2vec_eval"
    images = root / "image-tasks"
    for name, color in (("q1", "red"), ("q2", "blue"), ("c1", "red"), ("c2", "blue")):
        _png(images / "ImageNet-1K" / f"{name}.png", color)
    # V2 annotation fields, parquet shards in a folder per dataset, as a hub snapshot has them
    table = pa.table({
        "qry_inst": ["<|image_1|> Represent the given image for classification"] * 3,
        "qry_text": ["", "", ""],
        "qry_img_path": ["ImageNet-1K/q1.png", "ImageNet-1K/q2.png", ""],
        "tgt_text": [["red", "blue", "green"], ["blue", "red", "green"], []],
        "tgt_img_path": [["", "", ""], ["", "", ""], []],
    })
    (images / "ImageNet-1K" / "test").mkdir(parents=True)
    pq.write_table(table, images / "ImageNet-1K" / "test" / "test-00000-of-00001.parquet")
    # V1 fields: the instruction and placeholder live in qry_text; image candidates
    _jsonl(images / "MSCOCO_t2i.jsonl", [
        {"qry_text": "Find me an everyday image that matches the given caption: a red circle",
         "qry_img_path": "", "tgt_text": ["<|image_1|>\nRepresent the given image.", "<|image_1|>"],
         "tgt_img_path": ["ImageNet-1K/c1.png", "ImageNet-1K/c2.png"]},
        "{not json",
    ])
    # video retrieval: rows name videos the frames of which were pre-extracted
    frames = root / "video-tasks" / "frames" / "video_ret" / "MSR-VTT"
    for vid, color in (("video1", "red"), ("video2", "blue")):
        for i in range(10):
            _png(frames / vid / f"{i}.jpg", color)
    _jsonl(root / "video-tasks" / "data" / "msr-vtt.jsonl", [
        {"video_id": "video1", "video": "video1.mp4", "caption": "a red thing"},
        {"video_id": "video2", "video": "video2.mp4", "caption": "a blue thing"},
        {"video_id": "video1", "video": "video1.mp4", "caption": "red again"},
    ])
    # visdoc: BEIR tables as parquet folders, page images cached as {corpus-id}.png
    doc = root / "visdoc-tasks" / "ViDoRe_arxivqa"
    for name, rows in (("queries", {"query-id": ["a", "b"], "query": ["what is red", "what is blue"]}),
                       ("corpus", {"corpus-id": ["p1", "p2", "p3"]}),
                       ("qrels", {"query-id": ["a", "a", "b"], "corpus-id": ["p1", "p2", "p3"], "score": [2, 1, 1]})):
        (doc / name).mkdir(parents=True)
        pq.write_table(pa.table(rows), doc / name / "test-00000-of-00001.parquet")
    for cid in ("p1", "p2", "p3"):
        _png(doc / f"{cid}.png")
    return root


def test_discovery_and_readers_on_the_mmeb_layout(mmeb_root):
    entries = {e["name"]: e for e in discover(mmeb_root)}
    assert set(entries) == {"ImageNet-1K", "MSCOCO_t2i", "MSR-VTT", "ViDoRe_arxivqa"}
    assert entries["MSR-VTT"]["layout"] == "video" and entries["ViDoRe_arxivqa"]["layout"] == "beir"
    datasets, skipped = load_datasets(EvalConfig(root=str(mmeb_root)))
    assert skipped == []
    by_name = {d.name: d for d in datasets}

    cls = by_name["ImageNet-1K"]
    assert cls.kind == "local" and len(cls.queries) == 2
    assert cls.problems and "no candidates" in cls.problems[0] and ":3:" in cls.problems[0]
    assert cls.queries[0].instruction == "Represent the given image for classification"  # placeholder gone
    assert Path(cls.queries[0].images[0]).is_file()
    assert [cls.candidates[i].text for i in cls.lists[1]] == ["blue", "red", "green"]  # positive first
    assert cls.candidate_counts() == {"pool": 3, "per_query_mean": 3.0, "per_query_min": 3, "per_query_max": 3}

    t2i = by_name["MSCOCO_t2i"]
    assert len(t2i.queries) == 1 and "invalid JSON" in t2i.problems[0] and "MSCOCO_t2i.jsonl:2" in t2i.problems[0]
    first = t2i.candidates[t2i.lists[0][0]]
    assert first.text == "Represent the given image." and Path(first.images[0]).name == "c1.png"

    video = by_name["MSR-VTT"]
    assert video.kind == "global" and len(video.candidates) == 2 and len(video.queries) == 3
    assert Path(str(video.candidates[0].video.path)).name == "video1"  # the frames folder stands in
    assert video.qrels[2] == video.qrels[0]  # both captions of video1 point at the same pool entry

    docs = by_name["ViDoRe_arxivqa"]
    assert docs.info.metric == "ndcg_linear@5" and docs.qrels[0] == {0: 2.0, 1: 1.0}
    assert docs.queries[0].instruction.startswith("Find a document image")


def _frames(folder: Path, color: str, n: int = 3) -> Path:
    for i in range(n):
        _png(folder / f"{i}.jpg", color)
    return folder


def _beir(folder: Path, query: str) -> None:
    for name, rows in (("queries", {"query-id": ["a"], "query": [query]}), ("corpus", {"corpus-id": ["p1"]}),
                       ("qrels", {"query-id": ["a"], "corpus-id": ["p1"], "score": [1]})):
        (folder / name).mkdir(parents=True)
        pq.write_table(pa.table(rows), folder / name / "test-00000-of-00001.parquet")
    _png(folder / "p1.png")


def test_moment_retrieval_sets_and_fixed_visdoc_splits_are_read(tmp_path):
    root = tmp_path / "vlm2vec_eval"
    mret = root / "video-tasks" / "frames" / "video_mret"
    # QVHighlight / Charades-STA: <frames>/<video>/query/ and one folder per clip, positives named positive*
    for name, folder in (("QVHighlight", "QVHighlight"), ("Charades-STA", "Charades_STA")):
        video = mret / folder / "vid1"
        _frames(video / "query", "red")
        _frames(video / "positive_0", "red")
        _frames(video / "negative_0", "blue")
        _frames(video / "negative_1", "green")
        _jsonl(root / "video-tasks" / "data" / f"{name}.jsonl", [
            {"query": "the red part", "video_path": "videos/vid1.mp4"},
            {"query": "no frames", "video_path": "videos/missing.mp4"}])
    # MomentSeeker: named clips under video_frames/, a query image or a query segment
    seeker = mret / "MomentSeeker"
    for clip, color in (("movie/a_1", "red"), ("movie/a_2", "blue"), ("movie/a_3", "red"), ("movie/q", "green")):
        _frames(seeker / "video_frames" / clip.replace("/", "_"), color)
    _png(seeker / "query_still.jpg", "red")
    _jsonl(root / "video-tasks" / "data" / "MomentSeeker.jsonl", [
        {"query": "red scene", "input_frames": "", "positive_frames": [{"output_path": "movie/a_1.mp4"},
                                                                       {"output_path": "movie/a_3.mp4"}],
         "negative_frames": [{"output_path": "movie/a_2.mp4"}]},
        {"query": "like this", "input_frames": "still.jpg", "positive_frames": [{"output_path": "movie/a_1.mp4"}],
         "negative_frames": [{"output_path": "movie/a_2.mp4"}]},
        {"query": "after this", "input_frames": "movie/q.mp4", "positive_frames": [{"output_path": "movie/a_2.mp4"}],
         "negative_frames": []}])
    # visual documents: an original split and its -fixed version, and a ViDoRe-v2 folder name
    for name in ("ViDoSeek-page", "ViDoSeek-page-fixed", "MMLongBench-page", "esg_reports_v2"):
        _beir(root / "visdoc-tasks" / name, f"query of {name}")

    entries = {e["name"]: e for e in discover(root)}
    assert {n: entries[n]["meta_task"] for n in ("QVHighlight", "Charades-STA", "MomentSeeker")} == \
        {"QVHighlight": "V-MRET", "Charades-STA": "V-MRET", "MomentSeeker": "V-MRET"}
    assert {entries[n]["layout"] for n in ("QVHighlight", "Charades-STA", "MomentSeeker")} == {"moment"}
    assert entries["ViDoSeek-page-fixed"]["meta_task"] == "VD-OOD"  # not VD-other
    assert entries["ViDoRe_esg_reports_v2"]["meta_task"] == "VD-ViDoRe-v2"
    datasets, skipped = load_datasets(EvalConfig(root=str(root)))
    by_name = {d.name: d for d in datasets}
    assert "ViDoSeek-page" not in by_name and skipped == ["ViDoSeek-page: superseded by ViDoSeek-page-fixed"]
    assert {"ViDoSeek-page-fixed", "MMLongBench-page"} <= set(by_name)  # no -fixed twin: the original stays

    for name in ("QVHighlight", "Charades-STA"):
        ds = by_name[name]
        assert ds.kind == "local" and len(ds.queries) == 1 and "video frames not found" in ds.problems[0]
        q = ds.queries[0]
        assert q.text == "the red part" and Path(q.video.path).name == "query"
        assert q.instruction.startswith("Find the clip that corresponds to the described scene")
        clips = [Path(ds.candidates[i].video.path).name for i in ds.lists[0]]
        assert clips == ["negative_0", "negative_1", "positive_0"]
        assert ds.qrels[0] == {ds.lists[0][2]: 1.0}

    seeker_ds = by_name["MomentSeeker"]
    assert len(seeker_ds.queries) == 3 and not seeker_ds.problems
    text_q, image_q, video_q = seeker_ds.queries
    assert text_q.images == [] and text_q.video is None
    assert Path(image_q.images[0]).name == "query_still.jpg" and Path(video_q.video.path).name == "movie_q"
    assert len(seeker_ds.qrels[0]) == 2  # two positive clips
    assert [Path(seeker_ds.candidates[i].video.path).name for i in seeker_ds.lists[0]] == \
        ["movie_a_1", "movie_a_3", "movie_a_2"]
    # hit@1 counts any positive clip at the top: a scorer preferring movie_a_3 scores 1 on the first query
    names = [Path(c.video.path).name for c in seeker_ds.candidates]
    prefer = lambda q, cands: np.array([1.0 if names[c] == "movie_a_3" else 0.0 for c in cands])  # noqa: E731
    assert score_dataset(seeker_ds.head(1), prefer)["hit@1"] == 1.0
    assert aggregate({d.name: 50.0 for d in datasets}, {d.name: d.info for d in datasets})["counts"]["Video"] == 3


def test_selection_and_missing_datasets(mmeb_root):
    datasets, _ = load_datasets(EvalConfig(root=str(mmeb_root), datasets=["msr_vtt"], max_queries=1))
    assert [d.name for d in datasets] == ["MSR-VTT"] and len(datasets[0].queries) == 1
    assert len(datasets[0].candidates) == 2  # a global pool is not cut with the queries
    with pytest.raises(FileNotFoundError, match="nope"):
        load_datasets(EvalConfig(root=str(mmeb_root), datasets=["nope"]))


def test_frame_folders_sample_uniformly(tmp_path):
    for i in range(20):
        _png(tmp_path / f"frame_{i}.jpg", "red" if i < 10 else "blue")
    frames = read_frame_dir(tmp_path, num_frames=4)
    assert frames.frames.shape == (4, 32, 32, 3)
    assert frames.timestamps.tolist() == [2.0, 7.0, 12.0, 17.0]  # natural order: frame_2 < frame_10
    assert frames.frames[0][16, 16, 0] > 200 and frames.frames[3][16, 16, 2] > 200  # red first, blue last


def test_scoring_with_a_fixed_scorer_and_the_baselines(mmeb_root, tmp_path):
    datasets, _ = load_datasets(EvalConfig(root=str(mmeb_root), datasets=["ImageNet-1K", "ViDoRe_arxivqa"]))
    cls, docs = datasets
    # a scorer that prefers the alphabetically first label: "blue" wins for both queries
    labels = [c.text for c in cls.candidates]
    by_label = lambda q, cands: np.array([-sorted(labels).index(labels[c]) for c in cands], dtype=float)  # noqa: E731
    assert score_dataset(cls, by_label)["hit@1"] == pytest.approx(0.5)
    assert score_dataset(cls, by_label, failed_queries={1})["hit@1"] == 0.0
    assert score_dataset(cls, chance(cls))["hit@1"] == pytest.approx(1 / 3)
    assert text_overlap(cls) is not None and score_dataset(cls, text_overlap(cls))["hit@1"] == pytest.approx(1 / 3)
    assert text_overlap(docs) is None  # page pictures have no text: the baseline does not apply


def test_text_overlap_reads_pdf_text_layers(tmp_path):
    pdf = write_pdf(tmp_path / "r.pdf", ["Red squares ship on Monday.", "Blue circles ship on Friday."])
    doc = tmp_path / "visdoc-tasks" / "mydocs"
    _jsonl(doc / "queries.jsonl", [{"query-id": "q", "query": "When do blue circles ship?"}])
    _jsonl(doc / "corpus.jsonl", [{"corpus-id": "0", "pdf": str(pdf), "page": 0},
                                  {"corpus-id": "1", "pdf": str(pdf), "page": 1}])
    _jsonl(doc / "qrels.jsonl", [{"query-id": "q", "corpus-id": "1", "score": 1}])
    (ds,), _ = load_datasets(EvalConfig(root=str(tmp_path)))
    assert ds.info.meta_task == "VD-other" and ds.info.category == "VisDoc"
    assert score_dataset(ds, text_overlap(ds))["ndcg_linear@5"] == 1.0

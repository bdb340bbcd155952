"""The generated benchmark: deterministic, disjoint train / eval splits, held-out combinations, readable."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from omniret.config import EvalConfig, SyntheticConfig
from omniret.data.readers import read_pairs
from omniret.data.schema import TASK_GROUPS
from omniret.data.synthetic import TASKS, demo_corpus, generate_benchmark
from omniret.data.synthetic.scenes import split_combos
from omniret.data.synthetic.video_tasks import OPPOSITE
from omniret.eval.mmeb import load_datasets
from omniret.media.video import probe_video

SMALL = SyntheticConfig(train_per_task=6, eval_queries=5, candidates=5, train_negatives=2, pages_per_doc=4)


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _identity(side) -> tuple:
    """What a query is: its text and the bytes of its media (not the file names)."""
    return (side.text, tuple(_sha(i) for i in side.images), side.video and _sha(side.video.path),
            side.page and (_sha(side.page.path), side.page.page))


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    return out, generate_benchmark(out, SMALL)


def test_same_settings_give_the_same_bytes(bench, tmp_path):
    out, summary = bench
    again = generate_benchmark(tmp_path / "again", SMALL)
    assert again["train"] == summary["train"] and again["eval"] == summary["eval"]
    assert _digests(out) == _digests(tmp_path / "again")
    other = tmp_path / "other"
    generate_benchmark(other, SMALL.model_copy(update={"seed": 1}))
    assert _digests(other) != _digests(out)


def test_regenerating_replaces_only_its_own_output(tmp_path):
    small = SMALL.model_copy(update={"tasks": ["syn_cls_shape"]})
    generate_benchmark(tmp_path, small)
    stale = tmp_path / "train" / "media" / "stale.png"
    stale.write_bytes(b"x")
    generate_benchmark(tmp_path, small)
    assert not stale.exists()
    foreign = tmp_path / "foreign"
    (foreign / "train").mkdir(parents=True)
    (foreign / "train" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        generate_benchmark(foreign, small)
    assert (foreign / "train" / "keep.txt").read_text() == "mine"


def test_train_and_eval_share_no_item_and_eval_combos_are_held_out(bench):
    out, summary = bench
    held = {tuple(c) for c in summary["held_out"]}
    assert len(held) == SMALL.held_out and held == set(split_combos(SMALL.seed, SMALL.held_out)[1])
    train_media = {d for p, d in _digests(out / "train").items() if "/media/" in f"/{p}"}
    eval_media = {d for p, d in _digests(out / "eval").items() if "/media/" in f"/{p}"}
    assert train_media and eval_media and not train_media & eval_media

    train = read_pairs(out / "train")
    assert train.skipped == 0 and len(train.pairs) == SMALL.train_per_task * len(TASKS)
    assert {p.task for p in train.pairs} == set(TASK_GROUPS)
    assert all(len(p.negatives) == SMALL.train_negatives for p in train.pairs)
    for pair in train.pairs:  # no training item shows a held-out combination
        assert not {tuple(c) for c in pair.meta["combos"]} & held, pair.id
    train_queries = {_identity(p.query.to_item(out / "train")) for p in train.pairs}

    eval_rows = [json.loads(line) for f in sorted((out / "eval").rglob("*.jsonl")) if "visdoc" not in str(f)
                 for line in f.read_text().splitlines()]
    assert len(eval_rows) == sum(n for name, n in summary["eval"].items() if name != "syn_docs")
    for row in eval_rows:  # every evaluation query is about a held-out combination
        assert tuple(row["meta"]["target"]) in held
    queries = (out / "eval" / "visdoc-tasks" / "syn_docs" / "queries.jsonl").read_text().splitlines()
    products = {f"{c} {s}s" for c, s in held}
    assert all(any(p in json.loads(q)["query"] for p in products) for q in queries)

    datasets, skipped = load_datasets(EvalConfig(root=str(out / "eval")))
    assert skipped == [] and len(datasets) == len(TASKS)
    for ds in datasets:
        for q, query in enumerate(ds.queries):
            assert _identity(query) not in train_queries, (ds.name, q)


def test_eval_sets_follow_the_mmeb_protocols(bench):
    out, summary = bench
    datasets = {d.name: d for d in load_datasets(EvalConfig(root=str(out / "eval")))[0]}
    manifest = json.loads((out / "eval" / "benchmark.json").read_text())
    assert [d["name"] for d in manifest["datasets"]] == [t.name for t in TASKS]
    shape = datasets["syn_cls_shape"]
    assert shape.kind == "local" and shape.info.meta_task == "I-CLS"
    assert all(shape.qrels[q] == {shape.lists[q][0]: 1.0} for q in range(len(shape.queries)))
    assert {shape.candidates[i].text for i in shape.lists[0]} == {"circle", "square", "triangle"}
    t2i = datasets["syn_t2i"]
    assert all(len(c) == SMALL.candidates for c in t2i.lists) and t2i.queries[0].modality == "text"
    assert datasets["syn_it2i"].queries[0].modality == "image+text"
    video = datasets["syn_t2v"]
    assert video.kind == "global" and len(video.candidates) == len(video.queries) == summary["eval"]["syn_t2v"]
    assert probe_video(video.candidates[0].video.path).num_frames == SMALL.video_frames
    captions = [q.text for q in video.queries]
    assert len(set(captions)) == len(captions)  # no caption fits two videos
    first, second = captions[0].split(), captions[1].split()  # a clip and its reversed twin
    assert {first[4], second[4]} in ({"left", "right"}, {"up", "down"})
    assert first[:4] + first[5:] == second[:4] + second[5:]
    docs = datasets["syn_docs"]
    assert docs.info.metric == "ndcg_linear@5" and len(docs.candidates) == 24 // 3 * 4  # 8 reports x 4 pages
    assert all(sorted(g.values()) == [1.0, 2.0] for g in docs.qrels)
    assert datasets["syn_video_qa"].queries[0].modality == "text+video"


def test_demo_corpus(tmp_path):
    from omniret.data.synthetic.demo import read_demo_queries

    folder = tmp_path / "demo"
    files = demo_corpus(folder)
    kinds = sorted(p.suffix for p in files)
    assert kinds.count(".png") == 38 and kinds.count(".mp4") == 12 and kinds.count(".pdf") == 4  # 66 items
    manifest = json.loads((folder / "corpus.json").read_text())
    corpus = {str(p.relative_to(folder)) for p in files}
    assert {d["path"] for d in manifest["files"]} == corpus
    queries = read_demo_queries(folder)
    assert len(queries) == 48 and {q.kind for q in queries} == {
        "colour+shape", "count", "position", "motion", "page text", "image", "page"}
    assert all(q.expect in corpus for q in queries)
    assert all((folder / (q.image or q.pdf)).is_file() and (q.image or q.pdf) not in corpus
               for q in queries if q.kind in ("image", "page"))
    # Distractors differ in one attribute: the reversed clip, the swapped relation, other counts.
    for q in queries:
        if q.kind == "motion":
            twin = q.expect.rsplit("_", 1)[0] + "_" + OPPOSITE[q.expect.rsplit("_", 1)[1][:-4]] + ".mp4"
            assert twin in corpus
        if q.kind == "position":
            assert q.expect.replace(".png", "_swapped.png") in corpus
        if q.kind == "count":
            combo = q.expect.split("_", 1)[1]
            assert {f"images/{k}_{combo}" for k in (2, 3)} | {f"images/{combo}"} <= corpus
    held = {f"images/{c}_{s}.png" for c, s in manifest["held_out"]}
    assert held <= corpus and not held & {q.expect for q in queries}  # held-out combinations: distractors only
    assert probe_video(folder / queries[[q.kind for q in queries].index("motion")].expect).num_frames == 8
    assert _digests(folder) == _digests(Path(demo_corpus(tmp_path / "again")[0]).parents[1])

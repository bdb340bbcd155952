"""Teacher traces for the generated benchmark: written from the generator's own scene notes, labelled
source=teacher, stating the facts the positive is about; items that were not generated are errors."""

from __future__ import annotations

import json
import re

from PIL import Image

from omniret.config import SyntheticConfig, load_config
from omniret.data.readers import read_pairs
from omniret.data.schema import Pair, Side, write_pairs
from omniret.data.synthetic import generate_benchmark
from omniret.data.synthetic.scenes import Obj
from omniret.data.synthetic.teacher import describe_scene
from omniret.reasoning.job import run_teacher
from omniret.reasoning.store import ECR_FILE, ERRORS_FILE, EcrLookup, read_records


def test_scene_description_counts_groups_and_places():
    scene = (Obj("red", "circle", (0, 0), 10), Obj("red", "circle", (2, 2), 10), Obj("blue", "square", (1, 1), 10))
    assert describe_scene(scene) == "one blue square (centre); two red circles (top-left, bottom-right)"
    assert describe_scene(scene, crop_of=(1, 1)) == "a blue square filling the cut-out"


def test_teacher_traces_state_the_answer_facts_and_resume(tmp_path):
    bench = tmp_path / "bench"
    generate_benchmark(bench, SyntheticConfig(train_per_task=3, eval_queries=2,
                                              tasks=["syn_cls_count", "syn_t2v", "syn_docs"]))
    Image.new("RGB", (8, 8)).save(tmp_path / "own.png")
    write_pairs(tmp_path / "own" / "own.jsonl", [Pair(Side(images=[str(tmp_path / "own.png")]), [Side(text="x")],
                                                      dataset="own", task="image_qa", id="mine")])
    cfg = load_config(None, [f"reason.pairs=[{bench / 'train'},{tmp_path / 'own'}]", f"reason.eval_root={bench / 'eval'}",
                             "reason.sides=both", f"reason.out={tmp_path / 'ecr'}"])
    summary = run_teacher(cfg)
    assert summary.written == summary.items - 1 and summary.written > 20
    assert [e["name"] for e in summary.errors] == ["own mine query"]
    assert json.loads((tmp_path / "ecr" / ERRORS_FILE).read_text())["stage"] == "teacher"
    records = read_records(tmp_path / "ecr" / ECR_FILE)
    assert all(r["source"] == "teacher" and r["reasoner"] == "teacher" and r["closed"] for r in records)
    lookup = EcrLookup([tmp_path / "ecr"], reasoner="teacher")
    for pair in read_pairs(bench / "train" / "syn_cls_count.jsonl").pairs:  # the count label is stated
        assert f" {pair.positives[0].text} " in lookup.get(pair.query, "retrieval")
    for pair in read_pairs(bench / "train" / "syn_t2v.jsonl").pairs:  # the clip's motion is the caption
        assert pair.query.text in lookup.get(pair.positives[0], "video")
    for pair in read_pairs(bench / "train" / "syn_docs.jsonl").pairs:  # the page states the asked fact
        ecr = lookup.get(pair.positives[0], "visdoc")
        site = re.search(r"the (\w+) site", pair.query.text).group(1)
        assert ecr.startswith("<think>Page ") and f"The {site} site keeps" in ecr and "</think>" in ecr
    again = run_teacher(cfg)
    assert (again.written, again.already_done) == (0, summary.written)

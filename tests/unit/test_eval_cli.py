"""`omniret generate` / `omniret eval` / `omniret pairs` and ray_jobs/evaluate.py, end to end on a tiny model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from omniret.cli import main

ROOT = Path(__file__).resolve().parents[2]
TASKS = "[syn_cls_shape,syn_t2i,syn_t2v,syn_docs]"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "bench"
    code = main(["generate", "--out", str(out), "data.synthetic.held_out=1", "data.synthetic.train_per_task=3",
                 "data.synthetic.eval_queries=4", f"data.synthetic.tasks={TASKS}"])
    assert code == 0
    return out


def test_eval_prints_the_per_dataset_table_for_a_checkpoint(bench, tiny_dirs, tmp_path, capsys):
    capsys.readouterr()
    # one query image is corrupt: that query fails (scores 0), is named in the report, the run goes on
    rows = (bench / "eval" / "image-tasks" / "syn_cls_shape.jsonl").read_text().splitlines()
    broken = bench / "eval" / json.loads(rows[0])["qry_img_path"]
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    checkpoint = tiny_dirs["qwen2_vl"]
    code = main(["eval", "--root", str(bench / "eval"), "--out", str(tmp_path / "report"),
                 f"model.path={checkpoint}", "media.pdf_dpi=50"])
    out = capsys.readouterr().out
    assert code == 0
    assert "| dataset | meta-task | metric | queries | candidates | model | text overlap | chance |" in out
    for name in ("syn_cls_shape", "syn_t2i", "syn_t2v", "syn_docs", "Overall"):
        assert f"| {name} |" in out
    assert "(1 failed queries)" in out
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["model"]["path"] == str(checkpoint) and len(report["config_hash"]) == 12
    assert report["video_frames"] == "8 frames" and report["embedding"] == "in-process"
    rows = {r["name"]: r for r in report["datasets"]}
    cls = rows["syn_cls_shape"]
    assert cls["failed_queries"] == 1 and str(broken) in cls["errors"][0] and "syn_cls_shape query" in cls["errors"][0]
    assert cls["candidates"]["per_query_mean"] == 3 and cls["baselines"]["chance"] == pytest.approx(100 / 3)
    assert rows["syn_t2v"]["candidates"]["pool"] == 4 and rows["syn_t2v"]["baselines"]["text_overlap"] is None
    assert rows["syn_docs"]["metric"] == "ndcg_linear@5" and rows["syn_docs"]["candidates"]["pool"] == 8
    assert 0 <= rows["syn_t2i"]["score"] <= 100
    scores = [r["score"] for r in report["datasets"]]
    assert report["summary"]["Overall"] == pytest.approx(sum(scores) / len(scores))
    assert (tmp_path / "report" / "report.md").read_text().startswith("model `")


def test_eval_errors_name_the_problem(tmp_path, capsys):
    assert main(["eval", "--root", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_pairs_reads_the_generated_training_pairs(bench, capsys):
    capsys.readouterr()
    assert main(["pairs", "--source", str(bench / "train")]) == 0
    out = capsys.readouterr().out
    assert "read 12 pairs of 4 dataset(s) from 4 file(s); skipped 0 broken row(s)" in out
    assert "image_classification" in out and "syn_cls_shape" in out


def test_ray_job_entry_point_has_help(capsys):
    spec = importlib.util.spec_from_file_location("evaluate_job", ROOT / "ray_jobs" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0 and "model.path" in capsys.readouterr().out

"""The ECR job on a Ray Data actor pool (through the CLI) writes what the in-process run writes, and
reports an unreadable item by name while the rest goes on."""

from __future__ import annotations

import json

from PIL import Image

from omniret.cli import main
from omniret.config import SyntheticConfig
from omniret.data.schema import Pair, Side, write_pairs
from omniret.data.synthetic import generate_benchmark
from omniret.reasoning.store import ECR_FILE, ERRORS_FILE, read_records


def test_ray_job_matches_the_local_run_and_reports_bad_items(ray_session, tiny_dirs, tmp_path, capsys):
    generate_benchmark(tmp_path / "bench", SyntheticConfig(held_out=1, train_per_task=1, eval_queries=3,
                                                           tasks=["syn_grounding"]))
    Image.new("RGB", (10, 10)).save(tmp_path / "ok.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    write_pairs(tmp_path / "pairs" / "toy.jsonl", [
        Pair(Side(images=[str(tmp_path / "corrupt.png")]), [Side(text="a")], dataset="toy", task="image_qa", id="bad"),
        Pair(Side(text="a red circle", images=[str(tmp_path / "ok.png")]), [Side(text="b")], dataset="toy",
             task="image_qa", id="good")])
    common = ["--pairs", str(tmp_path / "pairs"), "--eval", str(tmp_path / "bench" / "eval"),
              f"reason.model.path={tiny_dirs['qwen2_vl']}", "reason.max_new_tokens=4", "media.max_pixels=3136",
              "reason.batch_rows=2"]
    assert main(["reason", *common, f"reason.out={tmp_path / 'local'}", "reason.ray=false"]) == 0
    assert main(["reason", *common, f"reason.out={tmp_path / 'ray'}", "reason.ray=true", "reason.actors=1"]) == 0
    assert "errors 1" in capsys.readouterr().out
    local = {r["key"]: r for r in read_records(tmp_path / "local" / ECR_FILE)}
    remote = {r["key"]: r for r in read_records(tmp_path / "ray" / ECR_FILE)}
    assert local == remote and len(local) == 4  # 3 grounding queries + the good pair's query
    assert {r["template"].split("@")[0] for r in local.values()} == {"grounding", "qa"}
    errors = [json.loads(x) for x in (tmp_path / "ray" / ERRORS_FILE).read_text().splitlines()]
    assert [e["name"] for e in errors] == ["toy bad query"] and errors[0]["stage"] == "reason"

"""The ingest and index commands: arguments, exit codes, reports (paths that need no Ray)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

from omniret.cli import main
from omniret.config import IndexConfig
from omniret.index.schema import item_id, items_schema
from omniret.index.store import IndexStore

ROOT = Path(__file__).resolve().parents[2]


def test_ray_job_entry_point_has_help():
    result = subprocess.run([sys.executable, str(ROOT / "ray_jobs" / "ingest.py"), "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--prune" in result.stdout and "--source" in result.stdout


def test_nothing_to_ingest_exits_non_zero_with_a_report(tiny_dirs, tmp_path, capsys):
    report = tmp_path / "out" / "report.json"
    code = main(["ingest", "--source", str(tmp_path / "missing"), "--report", str(report),
                 f"model.path={tiny_dirs['qwen2_vl']}", f"index.uri={tmp_path / 'db'}"])
    assert code == 1
    out = capsys.readouterr().out
    assert "files seen: 0" in out and "nothing could be ingested" in out
    data = json.loads(report.read_text())
    assert data["exit_code"] == 1 and data["errors"][0]["stage"] == "discover"
    assert data["errors"][0]["uri"] == str(tmp_path / "missing")


def test_no_sources_is_a_configuration_error(tiny_dirs, tmp_path, capsys):
    assert main(["ingest", f"model.path={tiny_dirs['qwen2_vl']}", f"index.uri={tmp_path / 'db'}"]) == 2
    assert "nothing to ingest" in capsys.readouterr().err


def test_index_command_builds_indexes_and_prints_status(tmp_path, capsys):
    store = IndexStore(IndexConfig(uri=str(tmp_path / "db")), fresh=True)
    store.create(8, "m")
    vectors = np.eye(8, dtype=np.float32)
    store.upsert(pa.Table.from_pylist([
        {"id": item_id(f"{i:064x}", "image"), "source_uri": f"/x/{i}.png", "sha256": f"{i:064x}",
         "modality": "image", "vector": vectors[i].tolist(), "model": "m", "created_at": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)}
        for i in range(8)], schema=items_schema(8, "m")))
    assert main(["index", f"index.uri={tmp_path / 'db'}"]) == 0
    out = capsys.readouterr().out
    assert "created fts index on text" in out
    status = json.loads(out[out.index("{"):])
    assert status["rows"] == 8 and {ix["columns"][0] for ix in status["indexes"]} == {"id", "modality", "text"}
    assert main(["index", "--status", f"index.uri={tmp_path / 'db'}"]) == 0
    assert "created" not in capsys.readouterr().out

"""`omniret demo --fast --exit-after-start`: corpus, ingest, Ray Serve, every demo query through the API,
the precision@1 table, the Gradio app; then a clean stop. The untrained model's answers are not
judged here (the trained figures are in README); the table must account for every query."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from netutil import free_port

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_demo_checks_its_queries_and_serves(tmp_path, tiny_dirs):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "platform"), "RAY_USAGE_STATS_ENABLED": "0"}
    command = [sys.executable, "-m", "omniret.cli", "demo", "--fast", "--exit-after-start", "--workdir",
               str(tmp_path / "demo"), "--ui-port", str(free_port()), f"serve.port={free_port()}",
               f"model.path={tiny_dirs['qwen2_vl']}", "embed.progress=false"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    out = done.stdout
    assert done.returncode == 0, (out + done.stderr)[-4000:]
    table = out[out.index("precision@1 of the demo's queries"):]
    rows = dict(re.findall(r"^(colour\+shape|count|position|motion|page text|image|page|all)\s+(\d+)\s", table, re.M))
    assert rows == {"colour+shape": "14", "count": "8", "position": "6", "motion": "6", "page text": "6",
                    "image": "5", "page": "3", "all": "48"}
    precision = float(re.search(r"^all\s+48\s+([0-9.]+)$", table, re.M).group(1))
    misses = len(re.findall(r"^  missed \(", table, re.M))
    assert misses == round(48 * (1 - precision))  # every query answered, every miss named
    assert "ready in" in out and (tmp_path / "demo" / "corpus" / "corpus.json").is_file()

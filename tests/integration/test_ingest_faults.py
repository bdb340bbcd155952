"""Faults during ingest, with a real local Ray and a real LanceDB table.

- A decoding process that dies (a signal, as a segfault or the OOM killer sends) fails only the
  files it was decoding; they are reported and every other file is ingested.
- Ingest jobs killed mid-write while another job writes the same table lose nothing: after a
  final run the table equals a clean run's (same ids, same vectors).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from omniret.index.store import IndexStore
from omniret.ingest.pipeline import run_ingest
from omniret.media import synth

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

#: Loaded into every worker process of the crash test's job only (Ray's worker_process_setup_hook):
#: decoding a file whose name starts with "segfault" or "oomkill" kills the decoding process with the
#: signal a native crash or the OOM killer would send. Nothing in the product knows about it.
CRASH_HOOK = textwrap.dedent('''
    import os
    import signal


    def install():
        from omniret.ingest import expand

        original = expand.decode_unit

        def decode_unit(unit, path, media, name, thumbnail_px):
            base = os.path.basename(name)
            if base.startswith("segfault"):
                os.kill(os.getpid(), signal.SIGSEGV)
            if base.startswith("oomkill"):
                os.kill(os.getpid(), signal.SIGKILL)
            return original(unit, path, media, name, thumbnail_px)

        expand.decode_unit = decode_unit
''')


def ingest_job(ray_session, cfg, source: Path, report: Path, runtime_env: dict | None = None,
               extra: tuple[str, ...] = ()) -> tuple[list[str], dict[str, str]]:
    """Command and environment of ray_jobs/ingest.py joining the test's Ray cluster as its own job."""
    overrides = [f"model.path={cfg.model.path}", f"index.uri={cfg.index.uri}", "media.pdf_dpi=50",
                 "ingest.thumbnail_px=32", *extra]
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    if runtime_env:  # what `ray job submit --runtime-env-json` hands to the entrypoint
        env["RAY_JOB_CONFIG_JSON_ENV_VAR"] = json.dumps({"runtime_env": runtime_env})
    return [sys.executable, str(ROOT / "ray_jobs" / "ingest.py"), "--source", str(source), "--report",
            str(report), *overrides], env


def test_a_decoder_process_that_dies_fails_only_its_files(ray_session, make_config, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    for i, color in enumerate(["red", "green", "blue"]):
        synth.draw_scene([{"shape": "circle", "color": color, "x": 30, "y": 30, "size": 30}],
                         size=(64, 64)).save(media / f"good_{i}.png")
    synth.write_pdf(media / "good.pdf", ["first page", "second page"])
    synth.draw_scene([{"shape": "square", "color": "red", "x": 30, "y": 30, "size": 30}],
                     size=(64, 64)).save(media / "segfault.png")
    synth.write_pdf(media / "oomkill.pdf", ["dies on its first page", "never reached"])
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "crashhook.py").write_text(CRASH_HOOK)
    cfg = make_config("qwen2_vl", f"index.uri={tmp_path / 'db'}")
    report = tmp_path / "report.json"
    # One decoding batch for all six files: the crashes happen beside the good files.
    cmd, env = ingest_job(ray_session, cfg, media, report, extra=("ingest.files_per_task=8",),
                          runtime_env={"working_dir": str(hook), "worker_process_setup_hook": "crashhook.install"})
    job = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    summary = json.loads(report.read_text())
    failed = {Path(e["uri"]).name: e for e in summary["errors"]}
    assert set(failed) == {"segfault.png", "oomkill.pdf"}
    assert all(e["stage"] == "decode" and "decoding process died" in e["reason"] for e in failed.values())
    assert summary["items_written"] == 5  # three images, two pages
    stored = {Path(r["source_uri"]).name for r in IndexStore(cfg.index, fresh=True).scan().to_pylist()}
    assert stored == {"good_0.png", "good_1.png", "good_2.png", "good.pdf"}
    recorded = {(Path(e["uri"]).name, e["stage"]) for e in IndexStore(cfg.index).errors().to_pylist()}
    assert recorded == {("segfault.png", "decode"), ("oomkill.pdf", "decode")}



def table_of(cfg) -> tuple[list[str], np.ndarray]:
    data = IndexStore(cfg.index, fresh=True).scan(["id", "vector"]).sort_by("id")
    return data["id"].to_pylist(), np.asarray(data["vector"].to_pylist(), dtype=np.float32)


def test_jobs_killed_mid_write_beside_a_concurrent_job_lose_nothing(ray_session, make_config, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    for i, (shape, color) in enumerate([("circle", "red"), ("square", "blue"), ("triangle", "green"),
                                        ("circle", "purple"), ("square", "orange"), ("triangle", "yellow")]):
        synth.draw_scene([{"shape": shape, "color": color, "x": 32, "y": 32, "size": 24 + 2 * i}],
                         size=(64, 64)).save(media / f"{i}.png")
    synth.write_pdf(media / "doc.pdf", ["one", "two", "three"])
    total = 6 + 3
    clean = make_config("qwen2_vl", f"index.uri={tmp_path / 'clean'}", "media.pdf_dpi=50", "ingest.thumbnail_px=32")
    assert run_ingest(clean, [str(media)]).items_written == total

    cfg = make_config("qwen2_vl", f"index.uri={tmp_path / 'db'}")
    # Commits of one row each, so that a kill lands between commits, and half a CPU per embedder so
    # that both jobs' actors and a decoding task fit on two CPUs.
    slow = ("ingest.write_batch_rows=1", "ingest.embed_batch_rows=1", "ingest.files_per_task=1", "ingest.embed_cpus=0.5")

    def start(name: str) -> subprocess.Popen:
        cmd, env = ingest_job(ray_session, cfg, media, tmp_path / f"{name}.json", extra=slow)
        out = (tmp_path / f"{name}.log").open("w")
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    store = IndexStore(cfg.index, fresh=True)

    def count() -> int:
        return store.count() if store.exists() else 0

    concurrent = start("concurrent")
    kills = []
    try:
        for attempt in range(2):
            victim, before = start(f"victim{attempt}"), count()
            deadline = time.monotonic() + 300
            while count() <= before and victim.poll() is None:
                assert time.monotonic() < deadline, (tmp_path / f"victim{attempt}.log").read_text()[-3000:]
                time.sleep(0.05)
            alive, beside = victim.poll() is None, concurrent.poll() is None
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait(timeout=60)
            kills.append((alive, beside, count()))
        assert concurrent.wait(timeout=600) == 0, (tmp_path / "concurrent.log").read_text()[-3000:]
    finally:
        for job in (concurrent,):
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
    print(f"(victim alive when killed, concurrent job running, rows then): {kills}")
    assert kills[0][:2] == (True, True) and 0 < kills[0][2] < total  # the first kill at least came mid-write

    final = run_ingest(make_config("qwen2_vl", f"index.uri={tmp_path / 'db'}", "media.pdf_dpi=50",
                                   "ingest.thumbnail_px=32"), [str(media)])
    assert final.exit_code() == 0 and final.items_failed == 0
    ids, vectors = table_of(cfg)
    clean_ids, clean_vectors = table_of(clean)
    assert ids == clean_ids and len(ids) == total
    assert np.allclose(vectors, clean_vectors, atol=1e-5)

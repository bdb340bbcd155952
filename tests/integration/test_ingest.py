"""Ingest with a real local Ray, a real LanceDB table and the tiny model.

A generated corpus (images, two multi-page PDFs, two videos cut into clips, five broken files)
must come out as one row per image/page/clip, errors for exactly the broken files, nothing new
on a second run, replaced rows for a changed file, and the same table after a run that is killed
midway and started again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from omniret.index.schema import item_id
from omniret.index.store import IndexStore
from omniret.ingest.pipeline import run_ingest
from omniret.ingest.summary import LIMIT_HIT, NOTHING_INGESTED, OK
from omniret.items import Item, PageRef, VideoRef
from omniret.media import synth
from omniret.models.embedder import Embedder

ROOT = Path(__file__).resolve().parents[2]
SCENES = [("circle", "red"), ("square", "blue"), ("triangle", "green"), ("circle", "yellow"),
          ("square", "purple"), ("triangle", "orange")]
REPORT_PAGES = ["The annual report of the shapes society.", "A rare quokka was seen near the triangles.",
                "Closing remarks about circles."]
NOTES_PAGES = ["Notes, first page: squares.", "Notes, second page: colours."]
BROKEN = ["corrupt.jpg", "truncated.mp4", "encrypted.pdf", "empty.png", "notes.bin"]


def write_corpus(root: Path) -> None:
    for i, (shape, color) in enumerate(SCENES):
        folder = root / "images" / ("nested" if i % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        synth.draw_scene([{"shape": shape, "color": color, "x": 32, "y": 32, "size": 36}], size=(64, 64)).save(
            folder / f"{color}_{shape}.png")
    (root / "docs").mkdir()
    synth.write_pdf(root / "docs" / "report.pdf", REPORT_PAGES, title="Report")
    synth.write_pdf(root / "docs" / "notes.pdf", NOTES_PAGES)
    (root / "videos").mkdir()
    for name, direction in (("right.mp4", "right"), ("down.mp4", "down")):
        synth.write_moving_video(root / "videos" / name, shape="square", color="blue", direction=direction,
                                 num_frames=16, size=(64, 64), fps=8)  # 2 s: two 1 s clips
    synth.write_broken_files(root / "broken")


def expected_ids(root: Path) -> set[str]:
    """Ids computed from the files themselves: sha256 of the bytes + page / clip."""
    def sha(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    ids = {item_id(sha(p), "image") for p in (root / "images").rglob("*.png")}
    ids |= {item_id(sha(root / "docs" / "report.pdf"), f"page={i}") for i in range(len(REPORT_PAGES))}
    ids |= {item_id(sha(root / "docs" / "notes.pdf"), f"page={i}") for i in range(len(NOTES_PAGES))}
    for video in (root / "videos").iterdir():
        ids |= {item_id(sha(video), "clip=0.000-1.000"), item_id(sha(video), "clip=1.000-2.000")}
    return ids


OVERRIDES = ["media.clip_seconds=1.0", "media.pdf_dpi=50", "media.video_frames=4", "ingest.files_per_task=2",
             "ingest.thumbnail_px=64"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root)
    return root


@pytest.fixture(scope="module")
def configure(make_config, tmp_path_factory):
    def make(name: str, *extra: str):
        return make_config("qwen2_vl", f"index.uri={tmp_path_factory.mktemp(name) / 'db'}", *OVERRIDES, *extra)
    return make


@pytest.fixture(scope="module")
def first(ray_session, configure, corpus):
    cfg = configure("main")
    return cfg, run_ingest(cfg, [str(corpus)])


def stored_ids(cfg) -> list[str]:
    return IndexStore(cfg.index, fresh=True).scan(["id"])["id"].to_pylist()


def test_every_image_page_and_clip_becomes_one_row(first, corpus):
    cfg, summary = first
    ids = stored_ids(cfg)
    assert len(ids) == len(set(ids)) == 6 + 5 + 4
    assert set(ids) == expected_ids(corpus)
    assert summary.files_seen == 6 + 2 + 2 + 5 and summary.items_written == 15 and summary.exit_code() == OK
    store = IndexStore(cfg.index)
    assert store.count("modality = 'page'") == 5 and store.count("modality = 'video'") == 4
    row = store.get([item_id(hashlib.sha256((corpus / "docs" / "report.pdf").read_bytes()).hexdigest(), "page=1")])[0]
    assert row["text"] == REPORT_PAGES[1] and row["page"] == 1 and row["thumbnail"][:2] == b"\xff\xd8"


def test_errors_name_exactly_the_broken_files(first, corpus):
    cfg, summary = first
    broken = {str(corpus / "broken" / name) for name in BROKEN}
    assert {e["uri"] for e in summary.errors} == broken and len(summary.errors) == 5
    stages = {Path(e["uri"]).name: e["stage"] for e in summary.errors}
    assert stages == {"corrupt.jpg": "decode", "truncated.mp4": "probe", "encrypted.pdf": "probe",
                      "empty.png": "read", "notes.bin": "classify"}
    recorded = IndexStore(cfg.index).errors().to_pylist()
    assert {(e["uri"], e["stage"]) for e in recorded} == {(e["uri"], e["stage"]) for e in summary.errors}
    assert "encrypted.pdf (probe): encrypted PDF" in summary.format()


def test_a_second_run_writes_and_embeds_nothing(first, corpus):
    cfg, _ = first
    store = IndexStore(cfg.index, fresh=True)
    version, stamps = store.table.version, store.scan(["id", "created_at"]).sort_by("id")
    again = run_ingest(cfg, [str(corpus)])
    assert (again.items_written, again.items_skipped, again.items_failed) == (0, 15, 5)
    assert again.exit_code() == OK
    assert store.table.version == version  # not a single commit to the items table
    assert store.scan(["id", "created_at"]).sort_by("id").equals(stamps)


def test_a_known_item_is_found_first(first, corpus):
    cfg, _ = first
    store = IndexStore(cfg.index)
    report, image = corpus / "docs" / "report.pdf", corpus / "images" / "nested" / "blue_square.png"
    video = corpus / "videos" / "down.mp4"
    queries = Embedder.from_config(cfg).encode(
        [Item(page=PageRef(str(report), 1)), Item(images=[str(image)]), Item(video=VideoRef(str(video), 1.0, 2.0))],
        progress=False)

    def sha(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    wanted = [item_id(sha(report), "page=1"), item_id(sha(image), "image"), item_id(sha(video), "clip=1.000-2.000")]
    for query, expected in zip(queries, wanted, strict=True):
        top = store.search(query, k=3)
        assert top[0]["id"] == expected and top[0]["score"] > 0.9999
    assert [h["id"] for h in store.search(text="quokka", k=5)] == [wanted[0]]
    hybrid = store.search(queries[1], text="quokka", k=5)  # an image's vector, a page's word
    assert hybrid[0]["id"] == wanted[0] and hybrid[1]["id"] == wanted[1]
    assert {h["modality"] for h in store.search(queries[0], k=20, modality="video")} == {"video"}
    assert all(h["source_uri"].startswith(str(corpus / "docs")) for h in
               store.search(queries[0], k=20, source_prefix=str(corpus / "docs") + "/"))


def test_a_changed_file_replaces_its_rows_and_prune_removes_gone_files(ray_session, configure, corpus, tmp_path):
    cfg = configure("changed")
    folder = tmp_path / "media"
    folder.mkdir()
    shutil.copy(corpus / "docs" / "notes.pdf", folder / "notes.pdf")
    shutil.copy(corpus / "images" / "red_circle.png", folder / "red_circle.png")
    assert run_ingest(cfg, [str(folder)]).items_written == 3
    old_sha = hashlib.sha256((folder / "notes.pdf").read_bytes()).hexdigest()

    synth.write_pdf(folder / "notes.pdf", ["Rewritten one.", "Rewritten two.", "A third page, new."])
    new_sha = hashlib.sha256((folder / "notes.pdf").read_bytes()).hexdigest()
    summary = run_ingest(cfg, [str(folder)])
    assert (summary.items_written, summary.items_skipped, summary.stale_removed) == (3, 1, 2)
    store = IndexStore(cfg.index, fresh=True)
    pdf_rows = store.scan(["id", "sha256"], where=f"source_uri = '{folder / 'notes.pdf'}'").to_pylist()
    assert sorted(r["id"] for r in pdf_rows) == [item_id(new_sha, f"page={i}") for i in range(3)]
    assert old_sha not in {r["sha256"] for r in pdf_rows}

    (folder / "red_circle.png").unlink()
    assert run_ingest(cfg, [str(folder)]).stale_removed == 0  # without prune, gone files keep their rows
    assert store.count() == 4
    pruned = run_ingest(cfg, [str(folder)], prune=True)
    assert (pruned.pruned, pruned.stale_removed, store.count()) == (1, 1, 3)

    for path in folder.iterdir():
        path.unlink()
    (folder / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    assert run_ingest(cfg, [str(folder)]).exit_code() == NOTHING_INGESTED


def test_a_killed_run_loses_nothing_and_a_rerun_completes_it(first, ray_session, configure, corpus, tmp_path):
    clean_cfg, _ = first
    cfg = configure("killed", "ingest.write_batch_rows=1", "ingest.embed_batch_rows=1")
    overrides = [f"model.path={cfg.model.path}", f"index.uri={cfg.index.uri}", *OVERRIDES,
                 "ingest.write_batch_rows=1", "ingest.embed_batch_rows=1"]
    # The job joins the test run's Ray cluster as a driver of its own; killing it ends its tasks and actors.
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    log = tmp_path / "job.log"
    with log.open("w") as out:
        job = subprocess.Popen([sys.executable, str(ROOT / "ray_jobs" / "ingest.py"), "--source", str(corpus),
                                *overrides], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    store = IndexStore(cfg.index, fresh=True)
    deadline = time.monotonic() + 240
    try:
        while store.count() == 0:
            assert job.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no row was written in time"
            time.sleep(0.05)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=60)
    written_before_kill = IndexStore(cfg.index, fresh=True).count()
    print(f'rows when killed: {written_before_kill}')
    assert 0 < written_before_kill < 15

    summary = run_ingest(cfg, [str(corpus)])
    assert summary.items_skipped >= written_before_kill and summary.exit_code() == OK
    ids = stored_ids(cfg)
    assert len(ids) == len(set(ids)) == 15
    assert set(ids) == set(stored_ids(clean_cfg))


def test_too_many_failed_files_are_a_limit_hit_with_exit_code_3(ray_session, configure, corpus, tmp_path):
    cfg = configure("limit", "ingest.max_failed_files=1", "ingest.files_per_task=1")
    summary = run_ingest(cfg, [str(corpus / "broken"), str(corpus / "images" / "red_circle.png")])
    assert summary.stopped and "ingest.max_failed_files=1" in summary.stopped
    assert len(summary.failed_files) >= 2 and summary.exit_code() == LIMIT_HIT
    assert "stopped early" in summary.format()

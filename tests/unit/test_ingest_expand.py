"""Expansion of files into items (no Ray): units per kind, content ids, skipping, bad files by name."""

from __future__ import annotations

import hashlib
import io
import shutil
from contextlib import ExitStack

import pytest
from PIL import Image

from omniret.config import MediaConfig
from omniret.index.schema import item_id
from omniret.ingest import rows
from omniret.ingest.expand import expand_file, open_and_plan, plan_units, thumbnail_jpeg
from omniret.media import synth


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    synth.draw_scene([{"shape": "circle", "color": "red", "x": 40, "y": 40, "size": 50}], size=(80, 80)).save(
        root / "red.png")
    synth.write_pdf(root / "doc.pdf", ["first page about otters", "second page", "third page"])
    synth.write_moving_video(root / "clip.mp4", shape="square", color="blue", direction="right",
                             num_frames=16, size=(64, 64), fps=8)
    synth.write_broken_files(root / "broken")
    return root


def expand(path, media: MediaConfig, existing: frozenset = frozenset()) -> list[dict]:
    with ExitStack() as stack:
        planned = open_and_plan(str(path), stack, media)
        if isinstance(planned, dict):
            return [planned]
        src, units = planned
        return list(expand_file(src, units, set(existing), media, thumbnail_px=64))


def test_units_per_kind(media_dir):
    media = MediaConfig()
    assert [u.key for u in plan_units("image", str(media_dir / "red.png"), media, "x")] == ["image"]
    pages = plan_units("pdf", str(media_dir / "doc.pdf"), media, "x")
    assert [(u.modality, u.page) for u in pages] == [("page", 0), ("page", 1), ("page", 2)]
    whole = plan_units("video", str(media_dir / "clip.mp4"), media, "x")
    assert [(u.key, u.t_start, u.t_end) for u in whole] == [("video", 0.0, 2.0)]
    clips = plan_units("video", str(media_dir / "clip.mp4"), MediaConfig(clip_seconds=1.0), "x")
    assert [(u.key, u.t_start, u.t_end) for u in clips] == [
        ("clip=0.000-1.000", 0.0, 1.0), ("clip=1.000-2.000", 1.0, 2.0)]


def test_a_pdf_expands_to_rendered_pages_with_text_and_content_ids(media_dir):
    out = expand(media_dir / "doc.pdf", MediaConfig(pdf_dpi=50))
    sha = hashlib.sha256((media_dir / "doc.pdf").read_bytes()).hexdigest()
    assert out[0] == {"source_uri": str(media_dir / "doc.pdf"), "sha256": sha, "status": rows.PLANNED, "n": 3,
                      "modality": "page"}
    pending = out[1:]
    assert [r["id"] for r in pending] == [item_id(sha, f"page={i}") for i in range(3)]
    assert pending[0]["text"] == "first page about otters" and pending[0]["status"] == rows.PENDING
    _, h, w = pending[0]["frames_shape"]
    assert len(pending[0]["payload"]) == h * w * 3 and (w, h) == (207, 292)  # A6 at 50 dpi
    assert Image.open(io.BytesIO(pending[0]["thumbnail"])).format == "JPEG"
    rows.table(out, rows.WORK_SCHEMA)  # the rows fit the pipeline's schema


def test_stored_ids_are_skipped_before_decoding(media_dir):
    media = MediaConfig(pdf_dpi=50)
    sha = hashlib.sha256((media_dir / "doc.pdf").read_bytes()).hexdigest()
    out = expand(media_dir / "doc.pdf", media, frozenset({item_id(sha, "page=0"), item_id(sha, "page=2")}))
    assert [(r["status"], r["n"]) for r in out[:2]] == [(rows.PLANNED, 3), (rows.SKIPPED, 2)]
    assert [r["id"] for r in out[2:]] == [item_id(sha, "page=1")]


def test_same_bytes_same_ids_whatever_the_name(media_dir, tmp_path):
    shutil.copy(media_dir / "red.png", tmp_path / "renamed.jpg")  # the name lies: content decides
    a, b = expand(media_dir / "red.png", MediaConfig()), expand(tmp_path / "renamed.jpg", MediaConfig())
    assert a[1]["id"] == b[1]["id"] and b[1]["modality"] == "image"
    assert b[1]["payload"] == (media_dir / "red.png").read_bytes()


def test_video_clips_carry_frames_and_times(media_dir):
    out = expand(media_dir / "clip.mp4", MediaConfig(clip_seconds=1.0, video_frames=4))
    clips = out[1:]
    assert [(r["t_start"], r["t_end"]) for r in clips] == [(0.0, 1.0), (1.0, 2.0)]
    assert clips[1]["frames_shape"] == [4, 64, 64] and len(clips[1]["timestamps"]) == 4
    assert all(1.0 <= t < 2.0 for t in clips[1]["timestamps"])


@pytest.mark.parametrize(("name", "stage", "words"), [
    ("corrupt.jpg", "decode", "corrupt image"),
    ("truncated.mp4", "probe", "truncated"),
    ("encrypted.pdf", "probe", "password"),
    ("empty.png", "read", "empty"),
    ("notes.bin", "classify", "unknown file type"),
])
def test_bad_files_fail_by_name_at_their_stage(media_dir, name, stage, words):
    out = expand(media_dir / "broken" / name, MediaConfig())
    failed = [r for r in out if r["status"] == rows.FAILED]
    assert len(failed) == 1 and failed[0]["stage"] == stage and words in failed[0]["reason"]
    assert failed[0]["source_uri"] == str(media_dir / "broken" / name)
    assert not [r for r in out if r["status"] == rows.PENDING]


def test_oversized_files_are_refused_before_reading(media_dir):
    out = expand(media_dir / "doc.pdf", MediaConfig(max_file_bytes=100))
    assert out[0]["stage"] == "read" and "too large" in out[0]["reason"]


def test_thumbnails_are_small_jpegs():
    image = Image.new("RGB", (640, 320), (200, 10, 10))
    thumb = Image.open(io.BytesIO(thumbnail_jpeg(image, 128)))
    assert thumb.format == "JPEG" and thumb.size == (128, 64)

"""Expand a file into the items it holds and decode them: the CPU stage before the embedder.

An image is one item; a PDF is one item per page (rendered at ``media.pdf_dpi`` plus its text); a
video is one item, or one per clip of ``media.clip_seconds`` when it is longer. Each item's id is
the file's sha256 plus the unit (page, clip), so ids already in the table are skipped before
anything is decoded. Decoding happens here, on CPU workers, so the embedder only runs the model.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from omniret.config import IndexConfig, MediaConfig
from omniret.errors import MediaError
from omniret.index.schema import item_id, unit_key
from omniret.ingest import rows
from omniret.ingest.fetch import LocalFile, local_file
from omniret.media.sniff import MediaKind
from omniret.models.isolation import reason_of

MAX_REASON = 500


@dataclass(frozen=True)
class Unit:
    """One item of a file: the whole image, page ``page``, or the video window [t_start, t_end)."""

    modality: str
    key: str
    page: int | None = None
    t_start: float | None = None
    t_end: float | None = None


def plan_units(kind: MediaKind, path: str, media: MediaConfig, name: str) -> list[Unit]:
    """The items of a file of ``kind`` (opening PDFs and videos just far enough to count them)."""
    if kind == "image":
        return [Unit("image", unit_key("image"))]
    if kind == "pdf":
        from omniret.media.pdf import page_count

        pages = page_count(path, name=name, max_bytes=media.max_file_bytes)
        return [Unit("page", unit_key("page", i), page=i) for i in range(pages)]
    from omniret.media.video import plan_clips, probe_video

    try:
        duration = probe_video(path, max_bytes=media.max_file_bytes).duration
    except MediaError as exc:
        raise MediaError(name, exc.reason) from None  # the path may be a temporary copy
    if media.clip_seconds is None or duration <= media.clip_seconds:
        return [Unit("video", unit_key("video"), t_start=0.0, t_end=duration)]
    return [Unit("video", unit_key("video", t_start=a, t_end=b), t_start=a, t_end=b)
            for a, b in plan_clips(duration, media.clip_seconds)]


def thumbnail_jpeg(image: Image.Image, px: int, quality: int = 80) -> bytes:
    """A JPEG of ``image`` whose longest side is at most ``px``."""
    small = image.copy()
    small.thumbnail((px, px), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    small.convert("RGB").save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def decode_unit(unit: Unit, path: str, media: MediaConfig, name: str, thumbnail_px: int) -> dict[str, Any]:
    """Decode one item into the row fields the embedder and the table need (payload, thumbnail, text)."""
    if unit.modality == "image":
        from omniret.media.image import load_image

        image = load_image(path, name=name, max_bytes=media.max_file_bytes, max_pixels=media.max_image_pixels)
        with open(path, "rb") as fp:
            # The encoded file is much smaller than its pixels; the embedder decodes it again.
            payload = fp.read()
        return {"payload": payload, "payload_kind": "encoded", "thumbnail": thumbnail_jpeg(image, thumbnail_px)}
    if unit.modality == "page":
        from omniret.media.pdf import render_page

        page = render_page(path, unit.page or 0, dpi=media.pdf_dpi, text_chars=media.pdf_text_chars,
                           max_bytes=media.max_file_bytes, max_pixels=media.max_image_pixels, name=name)
        return {"payload": page.image.tobytes(), "payload_kind": "rgb",
                "frames_shape": [1, page.image.height, page.image.width], "text": page.text or None,
                "thumbnail": thumbnail_jpeg(page.image, thumbnail_px)}
    from omniret.media.video import read_frames

    try:
        clip = read_frames(path, start=unit.t_start, end=unit.t_end, num_frames=media.video_frames,
                           fps=media.video_fps, max_frames=media.video_max_frames, max_bytes=media.max_file_bytes)
    except MediaError as exc:
        raise MediaError(name, exc.reason) from None
    frames = clip.frames
    middle = Image.fromarray(frames[len(frames) // 2])
    return {"payload": frames.tobytes(), "payload_kind": "rgb", "frames_shape": list(frames.shape[:3]),
            "timestamps": clip.timestamps.tolist(), "fps": float(clip.fps), "t_start": clip.start,
            "t_end": clip.end, "thumbnail": thumbnail_jpeg(middle, thumbnail_px)}


def expand_file(src: LocalFile, units: list[Unit], existing: set[str], media: MediaConfig,
                thumbnail_px: int) -> Iterator[dict[str, Any]]:
    """Rows for one file: its plan, what is already stored, then each new item decoded (or failed)."""
    ids = [item_id(src.sha256, u.key) for u in units]
    common = {"source_uri": src.uri, "sha256": src.sha256}
    modality = units[0].modality if units else None
    yield {**common, "status": rows.PLANNED, "n": len(units), "modality": modality}
    present = sum(i in existing for i in ids)
    if present:
        yield {**common, "status": rows.SKIPPED, "n": present, "modality": modality}
    for unit, uid in zip(units, ids, strict=True):
        if uid in existing:
            continue
        if src.changed():
            yield rows.failure(src.uri, "read", "the file changed while it was read; ingest it again",
                               sha256=src.sha256, unit=unit.key, item_id=uid)
            continue
        base = {**common, "id": uid, "unit": unit.key, "modality": unit.modality, "page": unit.page,
                "t_start": unit.t_start, "t_end": unit.t_end}
        try:
            yield {**base, "status": rows.PENDING, "n": 1, **decode_unit(unit, src.path, media, src.uri,
                                                                       thumbnail_px)}
        except Exception as exc:  # bad media, a decoder bug or an exotic file: report it, keep going
            yield rows.failure(src.uri, "decode", _short(reason_of(exc)), unit=unit.key, sha256=src.sha256,
                               item_id=uid)


def open_and_plan(uri: str, stack: ExitStack, media: MediaConfig
                  ) -> tuple[LocalFile, list[Unit]] | dict[str, Any]:
    """Read, hash, classify and count the items of one file; a failure row if any step fails."""
    try:
        src = stack.enter_context(local_file(uri, max_bytes=media.max_file_bytes))
    except Exception as exc:  # e.g. a storage client's own error type: this file fails, not the batch
        return rows.failure(uri, "read", _short(reason_of(exc)))
    if src.kind is None:
        return rows.failure(uri, "classify", "unknown file type: its content is not an image, video or PDF",
                            sha256=src.sha256)
    try:
        return src, plan_units(src.kind, src.path, media, uri)
    except Exception as exc:
        return rows.failure(uri, "probe", _short(reason_of(exc)), sha256=src.sha256)


def expand_files(batch: pa.Table, *, media: dict[str, Any], index: dict[str, Any], thumbnail_px: int,
                 isolate: bool = False) -> Iterator[pa.Table]:
    """Ray Data UDF: a batch of (uri, size) rows -> work rows (see :mod:`omniret.ingest.rows`).

    With ``isolate`` the decoding runs in a child Ray task (:mod:`omniret.ingest.isolate`), so a
    native crash fails only the files being decoded, not this task and the whole run.
    """
    uris = batch["uri"].to_pylist()
    if isolate:
        from omniret.ingest.isolate import expand_in_child

        yield from expand_in_child(uris, media=media, index=index, thumbnail_px=thumbnail_px)
    else:
        yield from expand_uris(uris, media=media, index=index, thumbnail_px=thumbnail_px)


def expand_uris(uris: list[str], *, media: dict[str, Any], index: dict[str, Any], thumbnail_px: int
                ) -> Iterator[pa.Table]:
    """Work rows of the files ``uris``: failures of unreadable files first, then file by file.

    The ids of all the files are looked up in the table with one query; rows are yielded item by
    item so a long PDF never sits in memory as a whole.
    """
    from omniret.index.store import IndexStore

    media_cfg = MediaConfig.model_validate(media)
    with ExitStack() as stack:
        planned, failed = [], []
        for uri in uris:
            result = open_and_plan(uri, stack, media_cfg)
            (failed if isinstance(result, dict) else planned).append(result)
        if failed:
            yield rows.table(failed, rows.WORK_SCHEMA)
        ids = [item_id(src.sha256, u.key) for src, units in planned for u in units]
        existing = IndexStore(IndexConfig.model_validate(index), fresh=True).existing_ids(ids)
        for src, units in planned:
            for row in expand_file(src, units, existing, media_cfg, thumbnail_px):
                yield rows.table([row], rows.WORK_SCHEMA)


def frames_of(row: dict[str, Any]) -> np.ndarray:
    """The raw RGB pixels of a work row as (T, H, W, 3) uint8."""
    t, h, w = row["frames_shape"]
    return np.frombuffer(row["payload"], dtype=np.uint8).reshape(t, h, w, 3)


def _short(reason: str) -> str:
    return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 3] + "..."

"""Probe videos, choose which frames to sample, cut long videos into clips, and decode frames.

Reading goes through decord only. The index arithmetic (:func:`frame_indices`,
:func:`plan_clips`) is pure so it can be tested and reused without a video file. Every problem
with a file (missing, empty, too large, not a video, truncated, corrupt, a time window outside
it) raises :class:`~omniret.errors.MediaError` naming the path.

Untrusted files cannot make decoding expensive: the frame size is read from the container header
before a decoder opens (``max_frame_pixels``; a header that declares none is checked on the first
decoded frame), and the duration is the frame count over a frame rate clamped to ``SANE_FPS``, so
a forged rate cannot make a long video pass for a short one.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import decord
import numpy as np

from omniret.errors import MediaError
from omniret.media.sniff import HEAD_BYTES, check_file, detect_kind
from omniret.media.video_header import declared_size

DEFAULT_MAX_BYTES = 2 * 2**30
#: Frame rates outside this range are taken as forged or broken and clamped (frames per second).
SANE_FPS = (0.1, 240.0)

# Top-level boxes of ISO base media files (MP4, MOV) whose first box is one of these.
_EBML_ID = b"\x1a\x45\xdf\xa3"  # Matroska/WebM files start with an EBML header...
_SEGMENT_ID = b"\x18\x53\x80\x67"  # ...followed by one Segment element holding everything else
_ISO_FIRST_BOXES = {b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}


@dataclass(frozen=True)
class VideoInfo:
    """What decord reports about a video: frame count, frame rate (clamped to ``SANE_FPS``), length in
    seconds (frame count / rate), and the frame size its container declares (None: declares none)."""

    num_frames: int
    fps: float
    duration: float
    width: int | None = None
    height: int | None = None


@dataclass
class VideoFrames:
    """Frames sampled from a video, with where they come from.

    ``frames`` is uint8 RGB of shape (T, H, W, 3); ``timestamps`` (T,) are the presentation times
    of those frames in seconds; ``fps`` is the sampling rate actually achieved, T / (end - start),
    which is what video-language models want as the rate of the frames they are given (the
    source's own rate is :attr:`VideoInfo.fps`); ``start``/``end`` is the time window sampled.
    """

    frames: np.ndarray
    timestamps: np.ndarray
    fps: float
    start: float
    end: float


def probe_video(path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES,
                max_frame_pixels: int | None = None) -> VideoInfo:
    """Open the video at ``path`` and return its frame count, frame rate, duration and frame size.

    Refuses a declared frame size over ``max_frame_pixels`` before opening a decoder.
    """
    reader, size = _open_reader(path, max_bytes, max_frame_pixels)
    return _info(reader, str(path), size)


def frame_indices(
    info: VideoInfo,
    *,
    start: float | None = None,
    end: float | None = None,
    num_frames: int | None = None,
    fps: float = 1.0,
    max_frames: int = 64,
) -> np.ndarray:
    """Choose the frames to decode from the window [start, end) seconds (default: whole video).

    With ``num_frames`` set, that many frames are taken at the centres of equal segments of the
    window (uniform sampling as in VLM2Vec/Qwen-VL). Otherwise the window is sampled at ``fps``
    frames per second, round(duration * fps) frames, at least 1 and at most ``max_frames``
    (uniformly re-spread when capped). Returns sorted int64 indices clipped to the readable
    frames; an index repeats when the window holds fewer frames than asked for.

    Raises ``ValueError`` for bad arguments or a window outside the video.
    """
    _check_sampling_args(num_frames, fps, max_frames)
    if info.num_frames <= 0 or info.fps <= 0:
        raise ValueError("video has no readable frames")
    t0, t1 = _resolve_window(info, start, end)
    count = (
        num_frames if num_frames is not None else min(max(1, math.floor((t1 - t0) * fps + 0.5)), max_frames)
    )
    f0, f1 = t0 * info.fps, t1 * info.fps
    centres = f0 + (np.arange(count) + 0.5) * ((f1 - f0) / count)
    # The epsilon keeps a centre that should land exactly on a frame from rounding just below it.
    indices = np.floor(centres + 1e-9).astype(np.int64)
    return np.sort(np.clip(indices, 0, info.num_frames - 1))


def plan_clips(duration: float, clip_seconds: float) -> list[tuple[float, float]]:
    """Cut [0, duration) into consecutive clips of ``clip_seconds``.

    A last fragment shorter than half a clip is merged into the previous clip (so no clip is
    shorter than half a clip, and none longer than 1.5 clips); a video shorter than one clip is
    one clip. E.g. 10 s in 4 s clips -> (0, 4), (4, 8), (8, 10); 9 s -> (0, 4), (4, 9).
    """
    if not (math.isfinite(duration) and duration > 0):
        raise ValueError(f"duration must be a positive number of seconds, got {duration}")
    if not (math.isfinite(clip_seconds) and clip_seconds > 0):
        raise ValueError(f"clip_seconds must be positive, got {clip_seconds}")
    # The small tolerance makes 12.0000001 s in 4 s clips three clips, not three and a sliver.
    full = max(1, math.floor(duration / clip_seconds + 1e-9))
    bounds = [i * clip_seconds for i in range(full)] + [float(duration)]
    remainder = duration - full * clip_seconds
    if remainder >= clip_seconds / 2:
        bounds.insert(-1, full * clip_seconds)
    return [(float(a), float(b)) for a, b in itertools.pairwise(bounds)]


def read_frames(
    path: str | os.PathLike[str],
    *,
    start: float | None = None,
    end: float | None = None,
    num_frames: int | None = None,
    fps: float = 1.0,
    max_frames: int = 64,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_frame_pixels: int | None = None,
) -> VideoFrames:
    """Decode the frames :func:`frame_indices` picks from the video at ``path``.

    ``max_frame_pixels`` refuses larger frames: by the container header before decoding, or, when
    the header declares no size, after decoding the first frame alone. Raises ``ValueError`` for
    bad sampling arguments and :class:`MediaError` for any problem with the file or the window.
    """
    _check_sampling_args(num_frames, fps, max_frames)
    source = str(path)
    reader, size = _open_reader(path, max_bytes, max_frame_pixels)
    info = _info(reader, source, size)
    try:
        t0, t1 = _resolve_window(info, start, end)
    except ValueError as e:
        raise MediaError(source, str(e)) from None
    indices = frame_indices(info, start=t0, end=t1, num_frames=num_frames, fps=fps, max_frames=max_frames)
    if max_frame_pixels is not None and size is None:
        first = _decode(reader, indices[:1], source)
        _check_frame_size(first.shape[2], first.shape[1], max_frame_pixels, source, "decoded")
    frames = _decode(reader, indices, source)
    return VideoFrames(
        frames=frames,
        timestamps=_timestamps(reader, indices, info.fps),
        fps=len(indices) / (t1 - t0),
        start=t0,
        end=t1,
    )


def _check_sampling_args(num_frames: int | None, fps: float, max_frames: int) -> None:
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if num_frames is None and not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be positive, got {fps}")
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")


def _resolve_window(info: VideoInfo, start: float | None, end: float | None) -> tuple[float, float]:
    """Return the window in seconds, ``end`` clipped to the video; ``ValueError`` if it is empty."""
    t0 = 0.0 if start is None else float(start)
    t1 = info.duration if end is None else float(end)
    if not (math.isfinite(t0) and math.isfinite(t1)):
        raise ValueError(f"time window must be finite, got start={start}, end={end}")
    if t0 < 0:
        raise ValueError(f"start must be >= 0 s, got {t0:g}")
    if t0 >= info.duration:
        raise ValueError(f"start {t0:g} s is beyond the end of the video ({info.duration:g} s)")
    if t0 >= t1:
        raise ValueError(f"empty time window: start {t0:g} s >= end {t1:g} s")
    return t0, min(t1, info.duration)


def _check_frame_size(width: int, height: int, limit: int, source: str, how: str) -> None:
    if width * height > limit:
        raise MediaError(source, f"{how} frame size {width}x{height} = {width * height} pixels exceeds the "
                                 f"limit of {limit}")


def _open_reader(path: str | os.PathLike[str], max_bytes: int, max_frame_pixels: int | None = None
                 ) -> tuple[decord.VideoReader, tuple[int, int] | None]:
    """Check the file and its declared frame size, then open it with decord.

    Refuses images, PDFs, cut-short MP4/MOV/AVI/MKV and frames over ``max_frame_pixels``; returns
    the reader and the declared (width, height), if any.
    """
    source = str(path)
    size = check_file(path, max_bytes)
    declared = None
    try:
        with Path(path).open("rb") as fp:
            head = fp.read(HEAD_BYTES)
            kind = detect_kind(head)
            if kind in ("image", "pdf"):
                # ffmpeg would happily open a PNG as a one-frame "video"; that is not what was asked.
                raise MediaError(
                    source, f"not a video: the file is {'a PDF' if kind == 'pdf' else 'an image'}"
                )
            if kind == "video" and head[4:8] in _ISO_FIRST_BOXES:
                _check_iso_boxes(fp, size, source)
            elif head.startswith(b"RIFF") and head[8:12] == b"AVI ":
                _check_riff_size(head, size, source)
            elif head.startswith(_EBML_ID):
                _check_ebml_segment(fp, size, source)
            try:
                declared = declared_size(fp, size)
            except (struct.error, ValueError):
                declared = None  # a header this parser cannot read; the decoded frame is checked instead
    except OSError as e:
        raise MediaError(source, f"cannot read file: {e.strerror or e}") from None
    if declared is not None and max_frame_pixels is not None:
        _check_frame_size(*declared, max_frame_pixels, source, "declared")
    try:
        # One decoding thread: readers run inside Ray workers that each own a CPU already.
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1), declared
    except Exception as e:
        raise MediaError(source, f"cannot open as a video (not a video, or corrupt): {_short(e)}") from None


def _check_iso_boxes(fp: IO[bytes], file_size: int, source: str) -> None:
    """Refuse an MP4/MOV whose top-level boxes run past the end of the file, or that has no moov.

    A download or copy cut short keeps a valid header, and decord may then open it and return
    fewer frames, garbage, or fail late; the box sizes say exactly how long the file should be.
    """
    pos, seen = 0, set()
    while pos + 8 <= file_size:
        fp.seek(pos)
        header = fp.read(16)
        box_size, kind = struct.unpack(">I4s", header[:8])
        if box_size == 1 and len(header) == 16:
            box_size = struct.unpack(">Q", header[8:16])[0]  # 64-bit size
        elif box_size == 0:
            seen.add(kind)  # the box extends to the end of the file
            break
        if box_size < 8:
            return  # not a box layout we understand; leave the verdict to the decoder
        if pos + box_size > file_size:
            raise MediaError(
                source,
                f"truncated file: its '{kind.decode('latin-1')}' box ends at byte {pos + box_size} "
                f"but the file has only {file_size} bytes",
            )
        seen.add(kind)
        pos += box_size
    if b"moov" not in seen:
        raise MediaError(source, "truncated or unfinished recording: no 'moov' box (the video index)")


def _check_riff_size(head: bytes, file_size: int, source: str) -> None:
    """Refuse an AVI shorter than its RIFF header says; decord would count only the frames left."""
    declared = struct.unpack("<I", head[4:8])[0] + 8
    if declared > file_size:
        raise MediaError(
            source, f"truncated file: the AVI header declares {declared} bytes but the file has {file_size}"
        )


def _check_ebml_segment(fp: IO[bytes], file_size: int, source: str) -> None:
    """Refuse a Matroska/WebM file shorter than its Segment element says it is.

    decord opens such a file and silently reports only the frames that survived. Live
    recordings may leave the Segment size "unknown"; those cannot be checked and pass.
    """
    fp.seek(0)
    head = fp.read(64)
    header_size, pos = _read_vint(head, len(_EBML_ID))
    if header_size is None:
        return
    segment_at = pos + header_size
    fp.seek(segment_at)
    element = fp.read(12)
    if not element.startswith(_SEGMENT_ID):
        return  # something unusual precedes the Segment; let the decoder judge
    segment_size, data_at = _read_vint(element, len(_SEGMENT_ID))
    if segment_size is not None and segment_at + data_at + segment_size > file_size:
        raise MediaError(
            source,
            f"truncated file: its Matroska segment ends at byte {segment_at + data_at + segment_size} "
            f"but the file has only {file_size} bytes",
        )


def _read_vint(buf: bytes, pos: int) -> tuple[int | None, int]:
    """Decode the EBML variable-length size at ``buf[pos]``: (value or None if unknown, end)."""
    if pos >= len(buf) or buf[pos] == 0:
        return None, pos
    length = 9 - buf[pos].bit_length()  # the number of leading zero bits says how many bytes follow
    if pos + length > len(buf):
        return None, pos
    value = int.from_bytes(buf[pos : pos + length], "big") & ((1 << (7 * length)) - 1)
    if value == (1 << (7 * length)) - 1:
        return None, pos + length  # all ones: "unknown size"
    return value, pos + length


def _info(reader: decord.VideoReader, source: str, size: tuple[int, int] | None = None) -> VideoInfo:
    num_frames = len(reader)
    if num_frames <= 0:
        raise MediaError(source, "no readable frames (empty or truncated video)")
    fps = float(reader.get_avg_fps())
    if not (math.isfinite(fps) and fps > 0):
        raise MediaError(source, f"no valid frame rate (got {fps})")
    # The rate is the file's own claim: clamped, a forged one cannot shrink the duration below
    # num_frames / SANE_FPS[1], which is what limits on seconds rely on.
    fps = min(max(fps, SANE_FPS[0]), SANE_FPS[1])
    width, height = size if size is not None else (None, None)
    return VideoInfo(num_frames=num_frames, fps=fps, duration=num_frames / fps, width=width, height=height)


def _decode(reader: decord.VideoReader, indices: np.ndarray, source: str) -> np.ndarray:
    """Decode each distinct index once; a truncated or corrupt stream fails here, not at open."""
    unique, inverse = np.unique(indices, return_inverse=True)
    try:
        batch = _to_numpy(reader.get_batch(unique.tolist()))
    except Exception as e:
        raise MediaError(source, f"cannot decode frames (truncated or corrupt video): {_short(e)}") from None
    if batch.ndim != 4 or batch.shape[0] != len(unique) or batch.shape[-1] != 3:
        raise MediaError(source, f"decoder returned frames of unexpected shape {batch.shape}")
    return np.ascontiguousarray(batch[inverse].astype(np.uint8, copy=False))


def _to_numpy(batch: Any) -> np.ndarray:
    # decord returns its own NDArray unless someone switched its global bridge (torch, ...).
    return batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)


def _timestamps(reader: decord.VideoReader, indices: np.ndarray, fps: float) -> np.ndarray:
    """Presentation start time of each frame, from the container; index / fps if unavailable."""
    try:
        stamps = np.asarray(reader.get_frame_timestamp(indices.tolist()), dtype=np.float64)
        if stamps.shape == (len(indices), 2) and np.isfinite(stamps).all():
            return stamps[:, 0]
    except Exception:
        pass  # some containers carry no usable timestamps; the frame rate is a fine estimate
    return indices.astype(np.float64) / fps


def _short(e: BaseException) -> str:
    """First line of a decord error, without its '[time] file.cc:line:' prefix and stack trace."""
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return re.sub(r"^(?:\[[\d:]+\]\s*\S+?:\d+:\s*)+", "", line)

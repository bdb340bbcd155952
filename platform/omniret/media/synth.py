"""Deterministic synthetic media: scenes of coloured shapes, moving-shape videos, text PDFs, broken files.

Used by the tests, the demo and benchmark generation, where the content of each item must be
known exactly (which shape, which colour, which way it moves, which words are on which page) so
that retrieval results can be checked. The same arguments always give the same pixels and, for
images and PDFs, the same bytes; nothing here draws from global randomness.
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pymupdf
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]

#: Clearly distinct colours, by name; shapes are drawn in these.
COLORS: dict[str, RGB] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 200, 20),
    "purple": (140, 50, 170),
    "orange": (250, 130, 20),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")

WHITE: RGB = (255, 255, 255)


def draw_scene(
    objects: Sequence[Mapping[str, Any]],
    size: tuple[int, int] = (224, 224),
    background: RGB = WHITE,
) -> Image.Image:
    """Draw shapes on a plain background and return the RGB image.

    Each object is a mapping with ``shape`` (one of :data:`SHAPES`), ``color`` (a name in
    :data:`COLORS` or an RGB tuple), ``x``, ``y`` (centre, pixels) and ``size`` (width of the
    shape's bounding box, pixels). Later objects are drawn over earlier ones; no anti-aliasing,
    so the pixels are exact and each shape is a single colour.
    """
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        _draw_shape(
            draw, obj["shape"], _rgb(obj["color"]), float(obj["x"]), float(obj["y"]), float(obj["size"])
        )
    return image


def _rgb(color: str | Sequence[int]) -> RGB:
    if isinstance(color, str):
        if color not in COLORS:
            raise ValueError(f"unknown colour {color!r}; expected one of {sorted(COLORS)}")
        return COLORS[color]
    r, g, b = (int(c) for c in color)
    return (r, g, b)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, fill: RGB, x: float, y: float, size: float) -> None:
    half = size / 2
    box = (x - half, y - half, x + half, y + half)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":  # pointing up, filling the box's width and height
        draw.polygon([(x, y - half), (x + half, y + half), (x - half, y + half)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def moving_positions(direction: str, num_frames: int, size: tuple[int, int], shape_size: int,
                     offset: float = 0.0) -> np.ndarray:
    """Centres (num_frames, 2) of a shape crossing a frame of ``size`` in ``direction``.

    The shape starts fully inside one edge and ends fully inside the opposite one, moving the
    same distance every frame, along the middle line of the frame shifted by ``offset`` pixels
    (down for horizontal motion, right for vertical motion).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; expected one of {DIRECTIONS}")
    width, height = size
    margin = shape_size / 2 + 2
    along = width if direction in ("left", "right") else height
    track = np.linspace(margin, along - margin, num_frames)
    if direction in ("left", "up"):
        track = track[::-1]
    across = np.full(num_frames, (height if direction in ("left", "right") else width) / 2 + offset)
    xy = (track, across) if direction in ("left", "right") else (across, track)
    return np.stack(xy, axis=1)


def write_moving_video(
    path: str | os.PathLike[str],
    *,
    shape: str,
    color: str | Sequence[int],
    direction: str,
    num_frames: int = 16,
    size: tuple[int, int] = (128, 128),
    fps: float = 8,
    background: RGB = WHITE,
    faststart: bool = False,
    shape_size: int | None = None,
    offset: float = 0.0,
) -> Path:
    """Write an MP4 (MPEG-4 part 2, 'mp4v') of one shape crossing the frame in ``direction``.

    The shape is ``shape_size`` pixels wide (default: a quarter of the frame's smaller side);
    see :func:`moving_positions` for the path and ``offset``. ``faststart`` puts the index ('moov' box) before the media data, as web videos have
    it; such a file cut short still opens, which is useful for testing truncation handling.
    Returns ``path``.
    """
    path = Path(path)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    shape_size = shape_size or min(size) // 4
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), tuple(size))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write an mp4v video to {path}")
    try:
        for x, y in moving_positions(direction, num_frames, size, shape_size, offset):
            frame = draw_scene(
                [{"shape": shape, "color": color, "x": x, "y": y, "size": shape_size}], size, background
            )
            writer.write(cv2.cvtColor(np.asarray(frame), cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    if not path.is_file() or path.stat().st_size == 0:
        raise RuntimeError(f"OpenCV wrote no video to {path}")
    if faststart:
        path.write_bytes(faststart_mp4(path.read_bytes()))
    return path


# Boxes on the path from 'moov' down to the chunk offset tables that must be rewritten.
_CONTAINER_BOXES = {b"moov", b"trak", b"mdia", b"minf", b"stbl"}


def faststart_mp4(data: bytes) -> bytes:
    """Move the 'moov' box of an MP4 in front of its 'mdat' box, fixing the chunk offsets.

    Equivalent to ``ffmpeg -movflags +faststart`` for simple single-mdat files such as those
    OpenCV writes. Data already in that order is returned unchanged.
    """
    top = list(_boxes(data, 0, len(data)))
    kinds = [kind for kind, *_ in top]
    if b"moov" not in kinds or b"mdat" not in kinds or kinds.index(b"moov") < kinds.index(b"mdat"):
        return data
    _, moov_pos, moov_header, moov_size = top[kinds.index(b"moov")]
    moov = bytearray(data[moov_pos : moov_pos + moov_size])
    # Everything from mdat on moves back by the size of moov, so every chunk offset grows by it.
    _shift_chunk_offsets(moov, moov_header, len(moov), len(moov))
    out = bytearray()
    for kind, pos, _, box_size in top:
        if kind == b"mdat":
            out += moov
        if kind != b"moov":
            out += data[pos : pos + box_size]
    return bytes(out)


def _boxes(data: bytes | bytearray, start: int, end: int):
    """Yield (type, position, header length, size) of the MP4 boxes in data[start:end]."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[pos + 8 : pos + 16])[0], 16
        elif size == 0:
            size = end - pos
        if size < header:
            return
        yield kind, pos, header, size
        pos += size


def _shift_chunk_offsets(buf: bytearray, start: int, end: int, delta: int) -> None:
    for kind, pos, header, size in list(_boxes(buf, start, end)):
        if kind in _CONTAINER_BOXES:
            _shift_chunk_offsets(buf, pos + header, pos + size, delta)
        elif kind in (b"stco", b"co64"):
            fmt = ">I" if kind == b"stco" else ">Q"
            width = struct.calcsize(fmt)
            table = pos + header + 8  # after version/flags and the entry count
            (count,) = struct.unpack(">I", buf[pos + header + 4 : table])
            for i in range(count):
                at = table + i * width
                (offset,) = struct.unpack(fmt, buf[at : at + width])
                buf[at : at + width] = struct.pack(fmt, offset + delta)


#: Page size of generated PDFs, in points (A6 portrait: small pages render fast).
PDF_PAGE_SIZE = (298, 420)


def write_pdf(path: str | os.PathLike[str], pages: Sequence[str], *, title: str | None = None) -> Path:
    """Write a PDF with one page per string in ``pages``; returns ``path``.

    Each page has a coloured band (colours cycle through :data:`COLORS`, so no rendered page is
    blank) and its text in a text box, shrunk until it fits. ``title`` goes into the metadata and
    is drawn as a heading on the first page. The bytes depend only on the arguments.
    """
    path = Path(path)
    with _build_pdf(pages, title) as doc:
        # no_new_id and empty dates keep the bytes free of time and randomness.
        doc.save(str(path), garbage=3, deflate=True, no_new_id=True)
    return path


def _build_pdf(pages: Sequence[str], title: str | None) -> pymupdf.Document:
    if not pages:
        raise ValueError("a PDF needs at least one page")
    doc = pymupdf.open()
    doc.set_metadata({"title": title or "", "creationDate": "", "modDate": "", "producer": "omniret synth"})
    width, height = PDF_PAGE_SIZE
    palette = list(COLORS.values())
    for index, text in enumerate(pages):
        page = doc.new_page(width=width, height=height)
        colour = tuple(c / 255 for c in palette[index % len(palette)])
        page.draw_rect(pymupdf.Rect(20, 20, width - 20, 60), color=colour, fill=colour)
        top = 75
        if title and index == 0:
            page.insert_text((20, 90), title, fontsize=14)
            top = 105
        _insert_fitting_text(page, pymupdf.Rect(20, top, width - 20, height - 20), text)
    return doc


def _insert_fitting_text(page: pymupdf.Page, rect: pymupdf.Rect, text: str) -> None:
    # insert_textbox draws nothing and returns < 0 when the text does not fit; try smaller fonts.
    for fontsize in (11, 9, 7, 5):
        if page.insert_textbox(rect, text, fontsize=fontsize) >= 0:
            return
    raise ValueError(f"page text of {len(text)} characters does not fit on a {PDF_PAGE_SIZE} page")


def write_broken_files(folder: str | os.PathLike[str]) -> dict[str, str]:
    """Write one file per kind of bad input into ``folder``; returns {file name: what is wrong}.

    corrupt.jpg (valid JPEG headers, then random bytes), truncated.mp4 (a valid video cut to 40%
    of its bytes), encrypted.pdf (needs the user password "secret"), empty.png (0 bytes) and
    notes.bin (random bytes of no known format). All but the encrypted PDF are byte-identical
    across calls (PDF encryption salts with fresh randomness).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)

    (folder / "corrupt.jpg").write_bytes(_corrupt_jpeg(rng))

    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        full = write_moving_video(
            Path(tmp) / "full.mp4", shape="circle", color="red", direction="right"
        ).read_bytes()
    (folder / "truncated.mp4").write_bytes(full[: int(len(full) * 0.4)])

    with _build_pdf(["This document is locked."], None) as doc:
        doc.save(
            str(folder / "encrypted.pdf"),
            encryption=pymupdf.PDF_ENCRYPT_AES_256,
            user_pw="secret",
            owner_pw="owner",
        )

    (folder / "empty.png").write_bytes(b"")
    # A leading zero-free ASCII-ish prefix guarantees no magic number matches, whatever follows.
    (folder / "notes.bin").write_bytes(
        b"OMNIRET-NOTES\n" + rng.integers(0, 256, 512, dtype=np.uint8).tobytes()
    )

    return {
        "corrupt.jpg": "JPEG headers followed by random bytes: the image data is corrupt",
        "truncated.mp4": "an MP4 video cut to 40% of its bytes: truncated",
        "encrypted.pdf": "a PDF encrypted with AES-256: needs a password",
        "empty.png": "an empty file (0 bytes)",
        "notes.bin": "random bytes of no known media type",
    }


def _corrupt_jpeg(rng: np.random.Generator) -> bytes:
    """A JPEG whose headers are intact but whose entropy-coded data is random."""
    scene = draw_scene([{"shape": "circle", "color": "blue", "x": 32, "y": 32, "size": 40}], size=(64, 64))
    buf = io.BytesIO()
    scene.save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    sos = data.index(b"\xff\xda")  # start-of-scan marker: headers end with its segment
    header_end = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    return data[:header_end] + rng.integers(0, 256, 2048, dtype=np.uint8).tobytes()

"""Read a video's frame size from its container header, without opening a decoder.

decord reports no frame size before it decodes a frame, and decoding a forged 16k x 16k frame
costs hundreds of MB; the sizes the container declares are read here instead: ISO base media
(MP4, MOV: ``tkhd`` and the visual sample entry of each video track), AVI (``avih``) and
Matroska/WebM (``PixelWidth``/``PixelHeight`` of each video track). The largest declared size is
returned; ``None`` when the container declares none this parser understands (the caller then
checks the first decoded frame instead). Parsing is bounded: nesting depth, element count and
the bytes read are all capped, so a hostile header cannot make this slow.
"""

from __future__ import annotations

import struct
from typing import IO

_MAX_DEPTH = 8
_MAX_ELEMENTS = 4096
_MKV_SCAN_BYTES = 4 * 2**20

_ISO_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl"}
_EBML_ID = b"\x1a\x45\xdf\xa3"
# Matroska master elements on the way to a track's pixel size; everything else is skipped.
_MKV_MASTERS = {0x18538067, 0x1654AE6B, 0xAE, 0xE0}  # Segment, Tracks, TrackEntry, Video
_MKV_PIXEL_WIDTH, _MKV_PIXEL_HEIGHT = 0xB0, 0xBA


def declared_size(fp: IO[bytes], file_size: int) -> tuple[int, int] | None:
    """(width, height) of the largest frame the container declares, or None if it declares none."""
    fp.seek(0)
    head = fp.read(16)
    sizes: list[tuple[int, int]] = []
    if head[4:8] in {b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}:
        _iso(fp, 0, file_size, 0, sizes, [0])
    elif head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        _avi(fp, sizes)
    elif head.startswith(_EBML_ID):
        _mkv(fp, min(file_size, _MKV_SCAN_BYTES), sizes)
    sizes = [(w, h) for w, h in sizes if w > 0 and h > 0]
    return max(sizes, key=lambda s: s[0] * s[1]) if sizes else None


def _iso(fp: IO[bytes], start: int, end: int, depth: int, sizes: list, seen: list[int],
         video_track: bool | None = None) -> None:
    pos = start
    while pos + 8 <= end and depth < _MAX_DEPTH and seen[0] < _MAX_ELEMENTS:
        seen[0] += 1
        fp.seek(pos)
        header = fp.read(16)
        if len(header) < 8:
            return
        box_size, kind = struct.unpack(">I4s", header[:8])
        body = pos + 8
        if box_size == 1 and len(header) == 16:
            box_size, body = struct.unpack(">Q", header[8:16])[0], pos + 16
        elif box_size == 0:
            box_size = end - pos
        if box_size < body - pos or pos + box_size > end:
            return
        if kind == b"trak":
            track: list = []
            _iso(fp, body, pos + box_size, depth + 1, track, seen, _is_video_track(fp, body, pos + box_size, seen))
            sizes += track
        elif kind in _ISO_CONTAINERS:
            _iso(fp, body, pos + box_size, depth + 1, sizes, seen, video_track)
        elif kind == b"tkhd":
            fp.seek(body)
            payload = fp.read(96)
            at = 76 if payload[:1] == b"\x00" else 88  # version 0 or 1: 32- or 64-bit times precede
            if len(payload) >= at + 8:
                w, h = struct.unpack(">II", payload[at:at + 8])
                sizes.append((w >> 16, h >> 16))  # 16.16 fixed point
        elif kind == b"stsd" and video_track:
            fp.seek(body + 8)  # version/flags, entry count
            entry = fp.read(36)
            if len(entry) == 36:
                sizes.append(struct.unpack(">HH", entry[32:36]))  # VisualSampleEntry width, height
        pos += box_size


def _is_video_track(fp: IO[bytes], start: int, end: int, seen: list[int]) -> bool:
    """Whether the ``hdlr`` box of this track says 'vide' (its sample entries are visual)."""
    found: list[bytes] = []

    def walk(a: int, b: int, depth: int) -> None:
        pos = a
        while pos + 8 <= b and depth < _MAX_DEPTH and seen[0] < _MAX_ELEMENTS:
            seen[0] += 1
            fp.seek(pos)
            box_size, kind = struct.unpack(">I4s", fp.read(8).ljust(8, b"\0"))
            if box_size < 8 or pos + box_size > b:
                return
            if kind == b"mdia":
                walk(pos + 8, pos + box_size, depth + 1)
            elif kind == b"hdlr":
                fp.seek(pos + 16)
                found.append(fp.read(4))
            pos += box_size

    walk(start, end, 0)
    return b"vide" in found


def _avi(fp: IO[bytes], sizes: list) -> None:
    fp.seek(0)
    head = fp.read(4096)
    at = head.find(b"avih")
    if at >= 0 and len(head) >= at + 8 + 40:
        w, h = struct.unpack("<II", head[at + 8 + 32:at + 8 + 40])  # MainAVIHeader dwWidth, dwHeight
        sizes.append((w, h))


def _mkv(fp: IO[bytes], end: int, sizes: list) -> None:
    fp.seek(0)
    data = fp.read(end)
    seen = [0]
    pixels: dict[int, int] = {}

    def walk(pos: int, stop: int, depth: int) -> None:
        while pos < stop and depth < _MAX_DEPTH and seen[0] < _MAX_ELEMENTS:
            seen[0] += 1
            element, pos = _ebml_id(data, pos)
            size, pos = _ebml_size(data, pos)
            if element is None or pos > len(data):
                return
            child_end = min(stop, len(data)) if size is None else pos + size
            if element == 0xE0:
                pixels.clear()
                walk(pos, child_end, depth + 1)
                if _MKV_PIXEL_WIDTH in pixels and _MKV_PIXEL_HEIGHT in pixels:
                    sizes.append((pixels[_MKV_PIXEL_WIDTH], pixels[_MKV_PIXEL_HEIGHT]))
            elif element in _MKV_MASTERS:
                walk(pos, child_end, depth + 1)
            elif element in (_MKV_PIXEL_WIDTH, _MKV_PIXEL_HEIGHT) and size is not None and size <= 8:
                pixels[element] = int.from_bytes(data[pos:pos + size], "big")
            elif size is None:
                return  # an unknown-size element we do not descend into: nothing more to find
            pos = child_end

    walk(0, len(data), 0)


def _ebml_id(buf: bytes, pos: int) -> tuple[int | None, int]:
    if pos >= len(buf) or buf[pos] == 0:
        return None, len(buf)
    length = 9 - buf[pos].bit_length()
    if length > 4 or pos + length > len(buf):
        return None, len(buf)
    return int.from_bytes(buf[pos:pos + length], "big"), pos + length


def _ebml_size(buf: bytes, pos: int) -> tuple[int | None, int]:
    if pos >= len(buf) or buf[pos] == 0:
        return None, len(buf) + 1
    length = 9 - buf[pos].bit_length()
    if pos + length > len(buf):
        return None, len(buf) + 1
    value = int.from_bytes(buf[pos:pos + length], "big") & ((1 << (7 * length)) - 1)
    if value == (1 << (7 * length)) - 1:
        return None, pos + length  # unknown size
    return value, pos + length

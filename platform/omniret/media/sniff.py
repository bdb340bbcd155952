"""Guess whether a file is an image, a video or a PDF from its first bytes (magic numbers).

File names lie (``photo.jpg`` that is really a PNG, uploads without extensions), so routing an
input to the right decoder is done on content. Only the formats the decoders here can open, or
that a user plausibly uploads, are recognised; anything else is ``None``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Literal

from omniret.errors import MediaError

MediaKind = Literal["image", "video", "pdf"]

#: How many leading bytes :func:`sniff_file` reads; enough for every signature below.
HEAD_BYTES = 64

# ISO base media files (MP4, MOV, 3GP, HEIF, AVIF) share the ``ftyp`` box; its major brand
# tells still-image containers (HEIF/HEIC, AVIF) apart from video ones.
_IMAGE_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis"}
# Old QuickTime files may start directly with one of these atoms instead of ``ftyp``.
_QUICKTIME_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}

_IMAGE_PREFIXES = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",  # PNG
    b"GIF87a",
    b"GIF89a",
    b"II*\x00",  # TIFF, little endian
    b"MM\x00*",  # TIFF, big endian
    b"II+\x00",  # BigTIFF, little endian
    b"MM\x00+",  # BigTIFF, big endian
)


def detect_kind(head: bytes) -> MediaKind | None:
    """Return ``"image"``, ``"video"`` or ``"pdf"`` for the leading bytes of a file, else ``None``.

    ``head`` should be at least the first 16 bytes; :data:`HEAD_BYTES` is plenty.
    """
    if head.startswith(_IMAGE_PREFIXES):
        return "image"
    if head.startswith(b"BM") and len(head) >= 14 and head[6:10] == b"\x00\x00\x00\x00":
        # "BM" alone is too common a text prefix; BMP headers have four reserved zero bytes.
        return "image"
    if head.startswith(b"RIFF") and len(head) >= 12:
        form = head[8:12]
        if form == b"WEBP":
            return "image"
        if form == b"AVI ":
            return "video"
        return None
    if head.startswith(b"\x1a\x45\xdf\xa3"):  # EBML: Matroska and WebM
        return "video"
    if len(head) >= 8 and head[4:8] == b"ftyp":
        return "image" if head[8:12] in _IMAGE_BRANDS else "video"
    if len(head) >= 8 and head[0] == 0 and head[4:8] in _QUICKTIME_ATOMS:
        # Requiring a small atom size (leading zero byte) keeps text such as "Get free ..." out.
        return "video"
    # The PDF header may legally follow a few bytes of junk, so look for it anywhere in the head.
    if b"%PDF-" in head:
        return "pdf"
    return None


def check_file(path: str | os.PathLike[str], max_bytes: int, *, name: str | None = None) -> int:
    """Return the size of the regular file at ``path``; raise :class:`MediaError` if it is unusable.

    Shared by the decoders so that a missing, empty or oversized input is refused the same way,
    before any decoder (which may allocate a lot, or print confusing native errors) sees it.
    Errors name ``name`` if given, else the path.
    """
    source = name or str(path)
    try:
        st = Path(path).stat()
    except FileNotFoundError:
        raise MediaError(source, "file not found") from None
    except OSError as e:
        raise MediaError(source, f"cannot read file: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise MediaError(source, "not a regular file")
    if st.st_size == 0:
        raise MediaError(source, "empty file (0 bytes)")
    if st.st_size > max_bytes:
        raise MediaError(source, f"file is too large: {st.st_size} bytes, limit {max_bytes}")
    return st.st_size


def sniff_file(path: str | os.PathLike[str]) -> MediaKind | None:
    """Detect the kind of the file at ``path`` from its first :data:`HEAD_BYTES` bytes.

    Returns ``None`` for empty files and unknown formats; raises :class:`MediaError` when the
    file cannot be read at all.
    """
    try:
        with Path(path).open("rb") as f:
            head = f.read(HEAD_BYTES)
    except FileNotFoundError:
        raise MediaError(str(path), "file not found") from None
    except IsADirectoryError:
        raise MediaError(str(path), "is a directory, not a file") from None
    except OSError as e:
        raise MediaError(str(path), f"cannot read file: {e.strerror or e}") from None
    return detect_kind(head)

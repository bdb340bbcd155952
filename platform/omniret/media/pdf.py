"""Render PDF pages to RGB images and extract their text, with pymupdf.

A PDF page is retrieved as a picture of the page (for visual document retrieval) plus its text
layer (for text-side signals and display). Missing, empty, non-PDF, corrupt, password-protected
and page-less documents, and pages out of range, raise :class:`~omniret.errors.MediaError`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pymupdf
from PIL import Image

from omniret.errors import MediaError
from omniret.media.sniff import check_file

DEFAULT_MAX_BYTES = 200 * 2**20
DEFAULT_MAX_PIXELS = 64 * 2**20

PdfSource = str | os.PathLike | bytes | bytearray | memoryview


@dataclass
class PdfPage:
    """One rendered page: RGB ``image``, whitespace-collapsed ``text``, 0-based ``page`` index."""

    image: Image.Image
    text: str
    page: int
    num_pages: int


def page_count(path: PdfSource, *, name: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> int:
    """Number of pages of the PDF; raises :class:`MediaError` if it cannot be rendered at all."""
    _, doc = _open(path, name, max_bytes)
    with doc:
        return doc.page_count


def render_page(
    path_or_bytes: PdfSource,
    page: int,
    *,
    dpi: int = 100,
    text_chars: int = 2000,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> PdfPage:
    """Render page ``page`` (0-based) at ``dpi`` and extract at most ``text_chars`` of its text.

    ``name`` is how errors refer to the input (default: the path, or ``"<bytes>"``).
    """
    source, doc = _open(path_or_bytes, name, max_bytes)
    with doc:
        if not 0 <= page < doc.page_count:
            raise MediaError(source, f"page {page} out of range: the document has {doc.page_count} pages")
        return _render(doc, page, source, dpi=dpi, text_chars=text_chars, max_pixels=max_pixels)


def iter_pages(
    path: PdfSource,
    dpi: int = 100,
    text_chars: int = 2000,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> Iterator[PdfPage]:
    """Yield every page in order, opening the document once. Errors are raised lazily, per page."""
    source, doc = _open(path, name, max_bytes)
    with doc:
        for index in range(doc.page_count):
            yield _render(doc, index, source, dpi=dpi, text_chars=text_chars, max_pixels=max_pixels)


def _open(src: PdfSource, name: str | None, max_bytes: int) -> tuple[str, pymupdf.Document]:
    """Read and open the document, refusing anything that cannot yield a page."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        source = name or "<bytes>"
        data = bytes(src)
        if not data:
            raise MediaError(source, "empty input (0 bytes)")
        if len(data) > max_bytes:
            raise MediaError(source, f"input is too large: {len(data)} bytes, limit {max_bytes}")
        head, target = data[:1024], {"stream": data}
    else:
        source = name or str(src)
        check_file(src, max_bytes, name=source)
        try:
            with Path(src).open("rb") as f:
                head = f.read(1024)
        except OSError as e:
            raise MediaError(source, f"cannot read file: {e.strerror or e}") from None
        target = {"filename": str(src)}  # let MuPDF read the file itself rather than copy it
    # The PDF header may follow some junk, but must be within the first 1024 bytes. Without this
    # check MuPDF would try to "repair" any file into some kind of document.
    if b"%PDF-" not in head:
        raise MediaError(source, "not a PDF (no %PDF- header)")
    try:
        doc = pymupdf.open(filetype="pdf", **target)
    except Exception as e:
        raise MediaError(source, f"corrupt PDF: {e}") from None
    problem = _problem(doc)
    if problem:
        doc.close()
        raise MediaError(source, problem)
    return source, doc


def _problem(doc: pymupdf.Document) -> str | None:
    if doc.needs_pass:
        return "encrypted PDF: a password is needed to open it"
    if doc.page_count == 0:
        return "PDF has no pages"
    return None


def _render(
    doc: pymupdf.Document, index: int, source: str, *, dpi: int, text_chars: int, max_pixels: int
) -> PdfPage:
    try:
        page = doc[index]
        # Check the size the pixmap would have before allocating it: a poster-sized page at a
        # high dpi is easily a few GB.
        width, height = (round(d * dpi / 72) for d in (page.rect.width, page.rect.height))
        if width * height > max_pixels:
            raise MediaError(
                source, f"page {index} at {dpi} dpi is {width}x{height} pixels, over the limit {max_pixels}"
            )
        pix = page.get_pixmap(dpi=dpi, colorspace=pymupdf.csRGB, alpha=False)
        image = Image.frombuffer("RGB", (pix.width, pix.height), pix.samples, "raw", "RGB", pix.stride, 1)
        text = " ".join(page.get_text("text").split())[:text_chars]
    except MediaError:
        raise
    except Exception as e:
        # MuPDF raises plain RuntimeErrors (and subclasses) for broken page content.
        raise MediaError(source, f"cannot render page {index}: {e}") from None
    # frombuffer shares pix's memory; copy so the image outlives the pixmap and the document.
    return PdfPage(image=image.copy(), text=text, page=index, num_pages=doc.page_count)

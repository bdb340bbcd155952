"""Load one image from a file, bytes or a PIL image into a fully decoded RGB ``PIL.Image``.

Every input is untrusted: sizes are checked from the file and the image header before any
pixels are decoded, and every decoding failure becomes a :class:`~omniret.errors.MediaError`
that names the input, so a batch job can report the item and carry on.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps

from omniret.errors import MediaError
from omniret.media.sniff import check_file

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image

DEFAULT_MAX_BYTES = 200 * 2**20
DEFAULT_MAX_PIXELS = 64 * 2**20

#: Background that transparent pixels are composited on; white, like a page or a browser.
BACKGROUND = (255, 255, 255)


def load_image(
    source: ImageSource,
    *,
    name: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode ``source`` into a new, fully loaded RGB image with EXIF orientation applied.

    ``source`` is a path, the encoded bytes, or an already open PIL image (which is not
    modified). ``name`` is how errors refer to the input; it defaults to the path, ``"<bytes>"``
    or ``"<image>"``. Multi-frame formats (GIF, TIFF) yield their first frame.

    Raises :class:`MediaError` for a missing/unreadable/empty/oversized file, an unknown or
    corrupt format, truncated data, or an image of more than ``max_pixels`` pixels.
    """
    if isinstance(source, Image.Image):
        source_name = name or "<image>"
        return _decode(source, source_name, max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        source_name = name or "<bytes>"
        data = bytes(source)
        if not data:
            raise MediaError(source_name, "empty input (0 bytes)")
        if len(data) > max_bytes:
            raise MediaError(source_name, f"input is too large: {len(data)} bytes, limit {max_bytes}")
        return _open_and_decode(io.BytesIO(data), source_name, max_pixels)
    if isinstance(source, (str, os.PathLike)):
        source_name = name or str(source)
        check_file(source, max_bytes, name=source_name)
        try:
            with Path(source).open("rb") as fp:
                return _open_and_decode(fp, source_name, max_pixels)
        except OSError as e:  # only opening/reading the file: decoding errors are MediaErrors
            raise MediaError(source_name, f"cannot read file: {e.strerror or e}") from None
    raise MediaError(name or repr(source)[:80], f"unsupported image source type {type(source).__name__}")


def _open_and_decode(fp: IO[bytes], source_name: str, max_pixels: int) -> Image.Image:
    """Parse the header from ``fp``, then decode; the result does not reference ``fp``."""
    try:
        with Image.open(fp) as im:
            return _decode(im, source_name, max_pixels)
    except Image.DecompressionBombError as e:
        # PIL refuses at open time when the header alone claims a gigantic size.
        raise MediaError(source_name, f"image has too many pixels: {e}") from None
    except Image.UnidentifiedImageError:
        raise MediaError(source_name, "not a recognised image format") from None
    except MediaError:
        raise
    except Exception as e:
        # A header that PIL recognises but cannot parse (bad chunk CRC, impossible fields, ...).
        raise MediaError(source_name, f"corrupt image header: {e or type(e).__name__}") from None


def _decode(im: Image.Image, source_name: str, max_pixels: int) -> Image.Image:
    """Check the size, decode the pixels, orient and convert ``im`` to a new RGB image."""
    width, height = im.size
    if width <= 0 or height <= 0:
        raise MediaError(source_name, f"image has no pixels ({width}x{height})")
    # ``im.size`` comes from the header, so this refuses decompression bombs before decoding.
    if width * height > max_pixels:
        raise MediaError(
            source_name, f"image has too many pixels: {width}x{height} = {width * height}, limit {max_pixels}"
        )
    try:
        im.load()
    except MediaError:
        raise
    except Image.DecompressionBombError as e:
        raise MediaError(source_name, f"image has too many pixels: {e}") from None
    except Exception as e:
        # Decoders of corrupt data raise almost anything (OSError, SyntaxError, ValueError,
        # struct.error, EOFError, ...); all of them mean the same thing to the caller.
        reason = str(e) or type(e).__name__
        kind = "truncated" if "truncated" in reason else "corrupt"
        raise MediaError(source_name, f"{kind} image data: {reason}") from None
    return to_rgb(_orient(im), source_name)


def _orient(im: Image.Image) -> Image.Image:
    """Return a new image with the EXIF orientation applied, the way up a viewer would show it."""
    try:
        return ImageOps.exif_transpose(im)  # a copy even when there is nothing to rotate
    except Exception:
        # A malformed EXIF block should not cost a readable image; keep it as stored.
        return im.copy()


def to_rgb(im: Image.Image, source_name: str = "<image>") -> Image.Image:
    """Return ``im`` as 8-bit RGB; transparency is composited on :data:`BACKGROUND`.

    An image that is already RGB is returned as is; any other is converted into a new one.
    Handles palette (with or without transparency), grey, grey+alpha, RGBA, CMYK, YCbCr and
    16/32-bit integer or float grey images (scaled down to 8 bits rather than clipped).
    """
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16"):
        grey = (np.asarray(im).astype(np.uint32) // 257).astype(np.uint8)  # 65535 -> 255
        return Image.fromarray(grey).convert("RGB")
    if mode in ("I", "F"):
        return Image.fromarray(_wide_grey_to_uint8(np.asarray(im))).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and im.has_transparency_data):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    try:
        return im.convert("RGB")
    except (ValueError, OSError) as e:
        raise MediaError(source_name, f"unsupported colour mode {mode}: {e}") from None


def _wide_grey_to_uint8(a: np.ndarray) -> np.ndarray:
    """Map a 32-bit int or float grey array to uint8, guessing its range from its values.

    The range is not recorded in the mode, so: floats within [0, 1] are scaled by 255, values
    within 8 bits pass, values within 16 bits are scaled down, and anything wider is normalised.
    """
    is_float = a.dtype.kind == "f"
    a = np.nan_to_num(a.astype(np.float64))
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if is_float and lo >= 0.0 and hi <= 1.0:
        a = a * 255.0
    elif hi > 65535.0:
        a = a * (255.0 / hi)
    elif hi > 255.0:
        a = a / 257.0
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)

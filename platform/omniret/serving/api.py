"""The HTTP contract: request/response models and the translation of request inputs into Items.

``/v1/embeddings`` follows OpenAI's shape (``input`` a string or a list; ``dimensions``;
``encoding_format`` float/base64, plus int8 and packed binary) and, like vLLM, also accepts multimodal
inputs as content parts::

    {"content": [{"type": "text", "text": "..."},
                 {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}},
                 {"type": "video_url", "video_url": {"url": "...", "start": 0, "end": 8, "num_frames": 8}},
                 {"type": "pdf_page", "pdf_page": {"url": "...", "page": 2}}],
     "instruction": "optional task instruction"}

A ``url`` is a ``data:`` URI, or a server-side path (or ``file://`` URI) inside ``serve.allowed_roots``.
Every refusal is an :class:`InputError` naming the offending field, which the routes turn into a
4xx JSON error. A request's work (parts, images, pixels, video frames, text length) is bounded from
headers before anything is decoded.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from omniret.config import MediaConfig, ServeConfig
from omniret.errors import OmniretError
from omniret.items import Item, PageRef, VideoRef
from omniret.media.sniff import detect_kind


class InputError(OmniretError):
    """A request field that cannot be used; ``status`` is the HTTP status to answer with."""

    def __init__(self, param: str, message: str, status: int = 400):
        self.param, self.message, self.status = param, message, status
        super().__init__(f"{param}: {message}")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UrlRef(Strict):
    url: str


class VideoUrl(UrlRef):
    start: float | None = Field(None, ge=0)
    end: float | None = Field(None, gt=0)
    num_frames: int | None = Field(None, ge=1)


class PageUrl(UrlRef):
    page: int = Field(0, ge=0)


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ImagePart(Strict):
    type: Literal["image_url"]
    image_url: UrlRef


class VideoPart(Strict):
    type: Literal["video_url"]
    video_url: VideoUrl


class PagePart(Strict):
    type: Literal["pdf_page"]
    pdf_page: PageUrl


Part = Annotated[TextPart | ImagePart | VideoPart | PagePart, Field(discriminator="type")]


class MultimodalInput(Strict):
    content: list[Part] = Field(min_length=1)
    instruction: str | None = None


InputValue = str | MultimodalInput


class EmbeddingsRequest(Strict):
    input: InputValue | list[InputValue]
    model: str | None = None
    dimensions: int | None = Field(None, ge=1)
    encoding_format: Literal["float", "base64", "int8", "binary"] = Field(
        "float", description="float: a list of floats. base64: little-endian float32 bytes, base64. int8: a list "
        "of integers in [-127, 127], round(x * 127 / max|x|) per vector (cosine is unchanged by the scale). "
        "binary: one bit per dimension, 1 where x >= 0, packed 8 per byte with numpy.packbits in big-endian "
        "bit order (dimension 0 is the top bit of byte 0, the last byte zero-padded), base64.")
    instruction: str | None = Field(None, description="Applied to every input without its own.")
    user: str | None = None
    mode: Literal["disc", "gen", "auto"] | None = Field(
        None, description="UME-R1 checkpoints only: disc (the <disc_emb> state, one pass), gen (reason, then the "
        "generated <gen_emb> state) or auto (gen where the model wrote <gen_emb>, else disc); absent: as usual.")


class RerankRequest(Strict):
    query: InputValue
    documents: list[InputValue] = Field(min_length=1)
    model: str | None = None
    top_n: int | None = Field(None, ge=1)
    return_documents: bool = False
    instruction: str | None = None


class SearchRequest(Strict):
    text: str | None = None
    image: str | None = Field(None, description="data: URI or allowed path")
    video: VideoUrl | None = None
    pdf_page: PageUrl | None = None
    instruction: str | None = None
    top_k: int = Field(10, ge=1, le=1000)
    modality: list[Literal["image", "page", "video"]] | None = None
    source_prefix: str | None = None
    mode: Literal["vector", "hybrid"] = "vector"
    rerank: bool = False
    rerank_top_n: int | None = Field(None, ge=1)


class IngestFile(Strict):
    name: str = Field(min_length=1, max_length=255)
    data: str = Field(description="data: URI of the file's bytes")


class IngestRequest(Strict):
    files: list[IngestFile] = Field(min_length=1)


# ---- inputs -> items ----------------------------------------------------------------------------
class InputParser:
    """Resolves URLs (data: URIs, allowed paths) and enforces the request limits of ``serve``.

    One parser serves one request: it adds up the request's work from headers (image sizes, video
    frame sizes and sampled frames, PDF page sizes) before anything is decoded, refuses a request
    over its budgets with 413, and deletes the temporary files it wrote on :meth:`close`.
    """

    def __init__(self, cfg: ServeConfig, media: MediaConfig | None = None, scratch: str | Path | None = None):
        self.cfg = cfg
        self.media = media or MediaConfig()
        self.roots = [Path(r).expanduser().resolve() for r in cfg.allowed_roots]
        self.scratch = Path(scratch) if scratch is not None else Path(tempfile.gettempdir())
        self.temp_files: list[Path] = []
        self.pixels = 0  # source pixels this request will decode
        self.visuals = 0

    def __enter__(self) -> InputParser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Delete the files written for this request."""
        for path in self.temp_files:
            path.unlink(missing_ok=True)
        self.temp_files.clear()

    def _spend(self, pixels: int, param: str) -> None:
        self.pixels += pixels
        self.visuals += 1
        if self.visuals > self.cfg.max_request_visuals:
            raise InputError(param, f"more than serve.max_request_visuals={self.cfg.max_request_visuals} images, "
                                    "videos and pages in one request", 413)
        if self.pixels > self.cfg.max_request_pixels:
            raise InputError(param, f"the request would decode {self.pixels} pixels; at most "
                                    f"serve.max_request_pixels={self.cfg.max_request_pixels}", 413)

    def data(self, url: str, param: str) -> bytes | Path:
        """The bytes of a data: URI, or the resolved path of an allowed server-side file."""
        if url.startswith("data:"):
            header, sep, payload = url.partition(",")
            if not sep or ";base64" not in header:
                raise InputError(param, "data URI must be base64: data:<mime>;base64,<payload>")
            try:
                return base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                raise InputError(param, "invalid base64 payload in data URI") from None
        if url.startswith(("http://", "https://")):
            raise InputError(param, "remote URLs are not fetched; send a data: URI or an allowed path")
        return self.path(url.removeprefix("file://"), param)

    def path(self, raw: str, param: str) -> Path:
        if not self.roots:
            raise InputError(param, "server-side paths are disabled (serve.allowed_roots is empty)", 403)
        try:
            path = Path(raw).expanduser().resolve()  # resolves '..' and symlinks before the root check
        except (OSError, RuntimeError, ValueError):
            raise InputError(param, "not a usable path") from None
        if not any(path.is_relative_to(root) for root in self.roots):
            raise InputError(param, "path is outside the allowed roots", 403)
        if not path.is_file():
            raise InputError(param, "no such file", 404)
        return path

    def _typed(self, value: bytes | Path, expected: str, param: str) -> bytes | Path:
        if expected not in self.cfg.allowed_types:
            raise InputError(param, f"{expected} inputs are not accepted here", 415)
        if isinstance(value, Path):
            with open(value, "rb") as fh:
                head = fh.read(64)
        else:
            head = value[:64]
        kind = detect_kind(head)
        if kind != expected:
            raise InputError(param, f"expected {expected} data, got {kind or 'an unknown type'}", 415)
        return value

    def _file(self, value: bytes | Path, suffix: str) -> Path:
        """decord reads files only: spill video bytes to a temporary file owned by this request."""
        if isinstance(value, Path):
            return value
        self.scratch.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(suffix=suffix, dir=self.scratch)
        self.temp_files.append(Path(name))
        with os.fdopen(fd, "wb") as fh:
            fh.write(value)
        return Path(name)

    def text(self, text: str, param: str, limit: int | None = None, what: str = "max_text_chars") -> str:
        limit = limit or self.cfg.max_text_chars
        if len(text) > limit:
            raise InputError(param, f"text longer than serve.{what}={limit} characters", 413)
        return text

    def instruction(self, text: str | None, param: str) -> str | None:
        if text is None:
            return None
        return self.text(text, param, self.cfg.max_instruction_chars, "max_instruction_chars")

    def image(self, url: str, param: str) -> bytes | str:
        value = self._typed(self.data(url, param), "image", param)
        width, height = _image_size(value, param)
        if width * height > self.media.max_image_pixels:
            raise InputError(param, f"image has too many pixels: {width}x{height}, limit "
                                    f"media.max_image_pixels={self.media.max_image_pixels}")
        self._spend(width * height, param)
        return str(value) if isinstance(value, Path) else value

    def video(self, ref: VideoUrl, param: str) -> VideoRef:
        from omniret.media.video import probe_video

        if ref.num_frames is not None and ref.num_frames > self.cfg.max_video_frames:
            raise InputError(f"{param}.num_frames", f"at most {self.cfg.max_video_frames} frames")
        if ref.start is not None and ref.end is not None and ref.end <= ref.start:
            raise InputError(f"{param}.end", "end must be after start")
        path = self._file(self._typed(self.data(ref.url, param), "video", param), ".mp4")
        try:
            info = probe_video(path, max_bytes=self.media.max_file_bytes,
                               max_frame_pixels=self.media.max_video_frame_pixels)
        except OmniretError as exc:
            raise InputError(param, str(getattr(exc, "reason", exc))) from None
        seconds = (ref.end or info.duration) - (ref.start or 0.0)
        if seconds > self.cfg.max_video_seconds:
            raise InputError(param, f"{seconds:.0f} s of video exceeds {self.cfg.max_video_seconds:.0f} s")
        m = self.media
        frames = ref.num_frames or m.video_frames or max(1, round(min(seconds, info.duration) * m.video_fps))
        frames = min(frames, m.video_max_frames)
        # A header that declares no size costs as much as the largest frame allowed.
        frame_pixels = info.width * info.height if info.width and info.height else m.max_video_frame_pixels
        self._spend(frames * frame_pixels, param)
        return VideoRef(str(path), ref.start, ref.end, ref.num_frames)

    def page(self, ref: PageUrl, param: str) -> PageRef:
        value = self._typed(self.data(ref.url, param), "pdf", param)
        width, height = _page_size(value, ref.page, self.media.pdf_dpi, param)
        self._spend(width * height, param)
        return PageRef(str(value) if isinstance(value, Path) else value, ref.page)

    def item(self, value: InputValue, param: str, instruction: str | None = None) -> Item:
        """One request input -> Item (named by its field, so errors point at it)."""
        if isinstance(value, str):
            return Item(text=self.text(value, param), instruction=instruction, name=param)
        if len(value.content) > self.cfg.max_parts:
            raise InputError(f"{param}.content", f"{len(value.content)} parts; at most "
                                                 f"serve.max_parts={self.cfg.max_parts}", 413)
        own = self.instruction(value.instruction, f"{param}.instruction")
        item = Item(instruction=own if own is not None else instruction, name=param)
        texts: list[str] = []
        for j, part in enumerate(value.content):
            where = f"{param}.content[{j}]"
            if isinstance(part, TextPart):
                texts.append(self.text(part.text, f"{where}.text"))
            elif isinstance(part, ImagePart):
                if len(item.images) >= self.cfg.max_images:
                    raise InputError(where, f"more than serve.max_images={self.cfg.max_images} images in one "
                                            "input", 413)
                item.images.append(self.image(part.image_url.url, f"{where}.image_url"))
            elif isinstance(part, VideoPart):
                if item.video is not None:
                    raise InputError(where, "one video per input")
                item.video = self.video(part.video_url, f"{where}.video_url")
            else:
                if item.page is not None:
                    raise InputError(where, "one PDF page per input")
                item.page = self.page(part.pdf_page, f"{where}.pdf_page")
        item.text = self.text("\n".join(texts), f"{param}.content") or None
        return item

    def items(self, values: InputValue | list[InputValue], param: str, instruction: str | None = None
              ) -> list[Item]:
        values = values if isinstance(values, list) else [values]
        if not values:
            raise InputError(param, "no inputs")
        if len(values) > self.cfg.max_inputs:
            raise InputError(param, f"{len(values)} inputs; at most {self.cfg.max_inputs} per request", 413)
        return [self.item(v, f"{param}[{i}]", instruction) for i, v in enumerate(values)]


def _image_size(value: bytes | Path, param: str) -> tuple[int, int]:
    """Width and height from the image header; PIL reads no pixels until asked to."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(value) if isinstance(value, bytes) else value) as im:
            return im.size
    except Image.DecompressionBombError:
        raise InputError(param, "image header declares a decompression bomb", 413) from None
    except Exception:
        raise InputError(param, "not a readable image") from None


def _page_size(value: bytes | Path, page: int, dpi: int, param: str) -> tuple[int, int]:
    """Rendered size of a PDF page from the document's page tree; nothing is rendered."""
    import pymupdf

    try:
        with pymupdf.open(stream=value, filetype="pdf") if isinstance(value, bytes) else pymupdf.open(value) as doc:
            count = doc.page_count
            if page >= count:
                raise InputError(f"{param}.page", f"page {page} out of range: the document has {count} pages")
            rect = doc.load_page(page).rect
    except InputError:
        raise
    except Exception:
        raise InputError(param, "not a readable PDF") from None
    scale = dpi / 72.0
    return max(1, round(rect.width * scale)), max(1, round(rect.height * scale))


def search_item(request: SearchRequest, parser: InputParser) -> Item:
    """The query of a /search request as an Item."""
    item = Item(text=parser.text(request.text, "text") if request.text else None,
                instruction=parser.instruction(request.instruction, "instruction"), name="query")
    if request.image:
        item.images.append(parser.image(request.image, "image"))
    if request.video:
        item.video = parser.video(request.video, "video")
    if request.pdf_page:
        item.page = parser.page(request.pdf_page, "pdf_page")
    if not item.modalities:
        raise InputError("text", "a search needs text, an image, a video or a PDF page")
    return item


def encode_vector(vector: Any, encoding_format: str) -> list[float] | list[int] | str:
    """OpenAI's encodings (a float list, or base64 of little-endian float32 bytes), int8 and packed binary
    (omniret.models.quantization)."""
    import numpy as np

    from omniret.models.quantization import pack_binary, to_int8

    array = np.asarray(vector, dtype="<f4")
    if encoding_format == "int8":
        return to_int8(array[None])[0].tolist()
    if encoding_format == "binary":
        return base64.b64encode(pack_binary(array[None])[0].tobytes()).decode("ascii")
    if encoding_format == "base64":
        return base64.b64encode(array.tobytes()).decode("ascii")
    return array.tolist()

"""What can be embedded or reranked: text, images, a video (or a clip of one), a PDF page, any mix.

These are plain descriptions (paths, bytes, already-decoded images); decoding happens in
omniret.models.encoding, so an item can travel cheaply between Ray tasks before it is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

ImageLike = str | Path | bytes | Image.Image


@dataclass
class VideoRef:
    """A video file, or the clip [start, end) seconds of it; ``num_frames`` overrides the configured count."""

    path: str | Path
    start: float | None = None
    end: float | None = None
    num_frames: int | None = None


@dataclass
class PageRef:
    """Page ``page`` (0-based) of a PDF file (or its bytes)."""

    path: str | Path | bytes
    page: int = 0


@dataclass
class Item:
    """One query or document. ``name`` identifies it in error messages (defaults to its position).

    ``reasoning`` is optional embedding-centric reasoning (Think-Then-Embed ECR) about the item; an
    embedding prompt renders it after the user text (omniret.models.reasoned).
    """

    text: str | None = None
    images: list[ImageLike] = field(default_factory=list)
    video: VideoRef | str | Path | Any | None = None  # Any: omniret.media.video.VideoFrames
    page: PageRef | None = None
    instruction: str | None = None
    name: str | None = None
    reasoning: str | None = None

    @property
    def modalities(self) -> list[str]:
        found = []
        if self.text:
            found.append("text")
        if self.images:
            found.append("image")
        if self.video is not None:
            found.append("video")
        if self.page is not None:
            found.append("page")
        return found


def as_item(value: Item | str) -> Item:
    """Accept a bare string as a text item."""
    return Item(text=value) if isinstance(value, str) else value

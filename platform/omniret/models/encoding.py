"""Turn items into model inputs: decode media, patchify, render the prompt, tokenize, collate.

Token ids are assembled directly: text pieces go through the tokenizer, each visual contributes its
pad-token run (one per merged patch). Tokenizing a string of thousands of pad tokens would be slow,
and user text is scrubbed of special-token strings first so it can never forge a visual placeholder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from omniret.config import MediaConfig
from omniret.errors import MediaError
from omniret.items import Item, PageRef, VideoRef
from omniret.media.image import load_image
from omniret.models.families import Family
from omniret.models.prompts import IMAGE_SPAN, VIDEO_SPAN, PromptTemplate
from omniret.models.vision import VisionSpec, image_patches, merged_tokens, video_patches

_SPAN_RE = re.compile(f"({re.escape(IMAGE_SPAN)}|{re.escape(VIDEO_SPAN)})")
_SPECIAL_RE = re.compile(r"<\|[A-Za-z0-9_]+\|>")


@dataclass
class Visual:
    """One patchified image or video with what the prompt and M-RoPE need to know about it."""

    kind: str  # "image" | "video"
    patches: np.ndarray
    grid_thw: tuple[int, int, int]
    timestamps: list[float] | None = None  # per temporal patch, seconds (videos)
    seconds_per_grid: float | None = None  # seconds spanned by one temporal patch (videos)


@dataclass
class Encoded:
    """One item ready for collation."""

    input_ids: list[int]
    visuals: list[Visual] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)


def scrub(text: str | None) -> str:
    """Remove special-token strings from user text (they would be parsed as control tokens)."""
    return _SPECIAL_RE.sub("", text) if text else ""


class InputEncoder:
    """Items -> token ids + patches for one checkpoint, template and media budget."""

    def __init__(self, tokenizer, family: Family, spec: VisionSpec, media: MediaConfig,
                 template: PromptTemplate, max_length: int):
        self.tokenizer = tokenizer
        self.family = family
        self.spec = spec
        self.media = media
        self.template = template
        self.max_length = max_length
        self.pad_id = tokenizer.pad_token_id
        self.image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
        self.video_id = tokenizer.convert_tokens_to_ids("<|video_pad|>")
        self.vision_start_id = tokenizer.convert_tokens_to_ids("<|vision_start|>")
        self.vision_end_id = tokenizer.convert_tokens_to_ids("<|vision_end|>")

    # ---- media -------------------------------------------------------------------------------
    def _image(self, image, source: str, max_pixels: int | None = None) -> Visual:
        m = self.media
        pil = load_image(image, name=source, max_bytes=m.max_file_bytes, max_pixels=m.max_image_pixels)
        patches, grid = image_patches(pil, self.spec, m.min_pixels, max_pixels or m.max_pixels, source)
        return Visual("image", patches, grid)

    def _video(self, video, source: str) -> list[Visual]:
        from omniret.media.frames import read_frame_dir  # decord loads only when needed
        from omniret.media.video import VideoFrames, read_frames

        m = self.media
        if isinstance(video, VideoFrames):
            frames = video
        else:
            ref = video if isinstance(video, VideoRef) else VideoRef(video)
            read = read_frame_dir if Path(ref.path).is_dir() else read_frames  # MMEB ships frame folders
            frames = read(ref.path, start=ref.start, end=ref.end, num_frames=ref.num_frames or m.video_frames,
                         fps=m.video_fps, max_frames=m.video_max_frames, max_bytes=m.max_file_bytes)
        if len(frames.frames) > m.video_max_frames:
            raise MediaError(source, f"{len(frames.frames)} frames exceed media.video_max_frames="
                                     f"{m.video_max_frames}")
        if self.template.video_as_frames:
            return [self._image(f, f"{source} frame {i}", m.video_max_pixels)
                    for i, f in enumerate(_frames_as_images(frames.frames))]
        patches, grid = video_patches(frames.frames, self.spec, m.min_pixels, m.video_max_pixels,
                                      m.video_total_pixels, source)
        tp = self.spec.temporal_patch_size
        stamps = np.asarray(frames.timestamps, dtype=np.float64)
        if len(stamps) % tp:
            stamps = np.concatenate([stamps, np.repeat(stamps[-1:], tp - len(stamps) % tp)])
        # Qwen3-VL labels each temporal patch with the mean time of its frames.
        per_grid = stamps.reshape(-1, tp).mean(axis=1).tolist()
        return [Visual("video", patches, grid, timestamps=per_grid, seconds_per_grid=tp / max(frames.fps, 1e-6))]

    def _page(self, page: PageRef, source: str) -> tuple[Visual, str]:
        from omniret.media.pdf import render_page  # pymupdf loads only when needed

        m = self.media
        rendered = render_page(page.path, page.page, dpi=m.pdf_dpi, text_chars=m.pdf_text_chars,
                               max_bytes=m.max_file_bytes)
        return self._image(rendered.image, source), rendered.text

    def visuals_and_text(self, item: Item, name: str) -> tuple[list[Visual], str]:
        """Decode every medium of ``item`` (videos first, then images, then the page, as Qwen orders them)."""
        visuals: list[Visual] = []
        text = scrub(item.text)
        if item.video is not None:
            path = getattr(item.video, "path", item.video)
            visuals += self._video(item.video, _describe(f"{name} video", path))
        for i, image in enumerate(item.images):
            visuals.append(self._image(image, _describe(f"{name} image {i}", image)))
        if item.page is not None:
            source = _describe(f"{name} page {item.page.page}", item.page.path)
            visual, page_text = self._page(item.page, source)
            visuals.append(visual)
            if page_text:
                text = f"{text}\n{scrub(page_text)}" if text else scrub(page_text)
        return visuals, text

    # ---- tokens ------------------------------------------------------------------------------
    def visual_ids(self, visual: Visual) -> list[int]:
        if visual.kind == "image":
            return [self.vision_start_id] + [self.image_id] * merged_tokens(visual.grid_thw, self.spec) + [
                self.vision_end_id]
        if self.family.uses_timestamps:
            t, h, w = visual.grid_thw
            per_frame = merged_tokens((1, h, w), self.spec)
            ids: list[int] = []
            for stamp in visual.timestamps or [0.0] * t:
                ids += self.tokenize(f"<{stamp:.1f} seconds>")
                ids += [self.vision_start_id] + [self.video_id] * per_frame + [self.vision_end_id]
            return ids
        return [self.vision_start_id] + [self.video_id] * merged_tokens(visual.grid_thw, self.spec) + [
            self.vision_end_id]

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def ids_with_visuals(self, text: str, visuals: list[Visual]) -> list[int]:
        """Tokenize ``text`` whose visual spans (in order) stand for ``visuals``."""
        ids: list[int] = []
        remaining = iter(visuals)
        for piece in _SPAN_RE.split(text):
            if piece in (IMAGE_SPAN, VIDEO_SPAN):
                ids += self.visual_ids(next(remaining))
            else:
                ids += self.tokenize(piece)
        return ids

    def encode(self, item: Item, index: int = 0) -> Encoded:
        """Render ``item`` with the template; only the user text is truncated to fit max_length."""
        name = item.name or f"item {index}"
        if not (item.text or "").strip() and not item.images and item.video is None and item.page is None:
            raise MediaError(name, "empty item: no text, image, video or PDF page")
        visuals, text = self.visuals_and_text(item, name)
        spans = [IMAGE_SPAN if v.kind == "image" else VIDEO_SPAN for v in visuals]
        head, body, tail = self.template.render(text, spans, scrub(item.instruction) if item.instruction
                                                else None)
        head_ids = self.ids_with_visuals(head, visuals)
        tail_ids = self.tokenize(tail)
        room = self.max_length - len(head_ids) - len(tail_ids)
        if room < 0:
            raise MediaError(name, f"needs {len(head_ids) + len(tail_ids)} tokens before any text but "
                                   f"model.max_length is {self.max_length}; lower media.max_pixels or "
                                   "the video frame budget")
        body_ids = self.tokenize(body)[:room]
        return Encoded(head_ids + body_ids + tail_ids, visuals)

    # ---- batches -----------------------------------------------------------------------------
    def collate(self, batch: list[Encoded], padding_side: str | None = None) -> dict[str, torch.Tensor]:
        """Pad to the longest item (left or right) and concatenate visuals in batch order."""
        side = padding_side or self.template.padding_side
        length = max(len(e) for e in batch)
        ids = torch.full((len(batch), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), length), dtype=torch.long)
        for row, enc in enumerate(batch):
            n = len(enc)
            cols = slice(length - n, length) if side == "left" else slice(0, n)
            ids[row, cols] = torch.tensor(enc.input_ids, dtype=torch.long)
            mask[row, cols] = 1
        out: dict[str, torch.Tensor] = {"input_ids": ids, "attention_mask": mask}
        types = torch.zeros_like(ids, dtype=torch.int)
        types[ids == self.image_id] = 1
        types[ids == self.video_id] = 2
        out["mm_token_type_ids"] = types
        for kind, key, grid_key in (("image", "pixel_values", "image_grid_thw"),
                                    ("video", "pixel_values_videos", "video_grid_thw")):
            vis = [v for enc in batch for v in enc.visuals if v.kind == kind]
            if vis:
                out[key] = torch.from_numpy(np.concatenate([v.patches for v in vis])).float()
                out[grid_key] = torch.tensor([v.grid_thw for v in vis], dtype=torch.long)
                if kind == "video" and self.family.uses_second_per_grid:
                    out["second_per_grid_ts"] = torch.tensor([v.seconds_per_grid for v in vis])
        return out


def _frames_as_images(frames: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(frame) for frame in frames]


def _describe(label: str, source: object) -> str:
    """Name an input in errors by its position in the item and, for files, by path."""
    return f"{label} ({source})" if isinstance(source, (str, Path)) else label

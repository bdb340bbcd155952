"""Turn items into model inputs: decode media, patchify, render the prompt, tokenize, collate.

Token ids are assembled, never parsed out of a prompt string: the template's own special tokens are
looked up by id, each visual contributes its pad-token run (one per merged patch), and all other
text goes through a copy of the tokenizer whose special tokens are split as plain text
(``encode_special_tokens``, what HF calls ``split_special_tokens``). So user text (instructions,
item text, PDF page text), however it nests or splits ``<|...|>`` strings, can never become a
control token or a visual placeholder. Text between two template special tokens is tokenized as
one run, exactly where the stock tokenizer would split it, so ordinary prompts get the same ids as
tokenizing the rendered prompt.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
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
from omniret.models.prompts import TEMPLATE, USER, VISUAL, PromptTemplate
from omniret.models.vision import VisionSpec, image_patches, merged_tokens, video_patches

Part = tuple[str, "str | int"]  # (TEMPLATE | USER, text) or (VISUAL, index into the visuals)


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


class PlainText:
    """Tokenizes text with every special token split as plain text; thread-safe.

    HF's ``split_special_tokens`` call argument flips a flag on the tokenizer's shared backend on
    every call, so concurrent callers could race; this keeps its own backend copy with the flag
    fixed. Slow tokenizers (no backend) fall back to the call argument.
    """

    def __init__(self, tokenizer):
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._backend = None
        if backend is not None:
            from tokenizers import Tokenizer

            self._backend = Tokenizer.from_str(backend.to_str())
            self._backend.encode_special_tokens = True
        self._tokenizer = tokenizer
        special = {tid for tid, tok in getattr(tokenizer, "added_tokens_decoder", {}).items()
                   if getattr(tok, "special", False)}
        #: ids no user text may produce: every special token the tokenizer knows.
        self.special_ids = frozenset(special | set(tokenizer.all_special_ids))

    def __call__(self, text: str) -> list[int]:
        if not text:
            return []
        if self._backend is not None:
            return self._backend.encode(text, add_special_tokens=False).ids
        return self._tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


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
        self.plain = PlainText(tokenizer)
        # Template text is trusted: its special-token strings are found by name, longest first.
        names = sorted(tokenizer.convert_ids_to_tokens(sorted(self.plain.special_ids)), key=len, reverse=True)
        self._special_by_name = {name: tokenizer.convert_tokens_to_ids(name) for name in names}
        self._template_special_re = re.compile("(" + "|".join(re.escape(n) for n in names) + ")")

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
                         fps=m.video_fps, max_frames=m.video_max_frames, max_bytes=m.max_file_bytes,
                         **({} if read is read_frame_dir else {"max_frame_pixels": m.max_video_frame_pixels}))
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
        """Decode every medium of ``item`` (videos first, then images, then the page, as Qwen orders them).

        The text returned is user text (item text, then the page's text layer), still untrusted.
        """
        visuals: list[Visual] = []
        text = item.text or ""
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
                text = f"{text}\n{page_text}" if text else page_text
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
        """Token ids of ``text`` with any special-token string in it kept as plain text."""
        return self.plain(text)

    def assemble(self, parts: Sequence[Part], visuals: Sequence[Visual], name: str) -> list[int]:
        """Token ids of a prompt given as parts (see ``PromptTemplate.render_parts``).

        Template text contributes its special tokens by id; runs of text between them (template
        and user text alike) are tokenized with special tokens split, so user text cannot produce
        one; every visual must be placed exactly once.
        """
        ids: list[int] = []
        run: list[str] = []
        placed: list[int] = []

        def flush() -> None:
            if run:
                ids.extend(self.user_ids("".join(run), name))
                run.clear()

        for kind, value in parts:
            if kind == VISUAL:
                if not isinstance(value, int) or not 0 <= value < len(visuals):
                    raise MediaError(name, f"the prompt refers to visual {value} but the item has {len(visuals)}")
                flush()
                ids.extend(self.visual_ids(visuals[value]))
                placed.append(value)
            elif kind == USER:
                run.append(str(value))
            elif kind == TEMPLATE:
                for piece in self._template_special_re.split(str(value)):
                    if piece in self._special_by_name:
                        flush()
                        ids.append(self._special_by_name[piece])
                    elif piece:
                        run.append(piece)
            else:
                raise ValueError(f"unknown prompt part kind {kind!r}")
        flush()
        if sorted(placed) != list(range(len(visuals))):
            raise MediaError(name, f"the prompt places visuals {placed} but the item has {len(visuals)}")
        return ids

    def user_ids(self, text: str, name: str) -> list[int]:
        """Ids of user text alone; a tokenizer that still produced a special token is refused."""
        ids = self.tokenize(text)
        if self.plain.special_ids.intersection(ids):
            raise MediaError(name, "text maps to control tokens in this tokenizer")
        return ids

    def encode(self, item: Item, index: int = 0) -> Encoded:
        """Render ``item`` with the template; only the user text is truncated to fit max_length."""
        name = item.name or f"item {index}"
        if not (item.text or "").strip() and not item.images and item.video is None and item.page is None:
            raise MediaError(name, "empty item: no text, image, video or PDF page")
        visuals, text = self.visuals_and_text(item, name)
        parts, body, tail = self.template.render_parts(text, len(visuals), item.instruction)
        head_ids = self.assemble(parts, visuals, name)
        tail_ids = self.assemble([(TEMPLATE, tail)], [], name)
        room = self.max_length - len(head_ids) - len(tail_ids)
        if room < 0:
            raise MediaError(name, f"needs {len(head_ids) + len(tail_ids)} tokens before any text but "
                                   f"model.max_length is {self.max_length}; lower media.max_pixels or "
                                   "the video frame budget")
        body_ids = self.user_ids(body, name)[:room]
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

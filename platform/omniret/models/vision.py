"""Qwen-VL pixel preprocessing without torchvision: resize to the patch grid, normalise, patchify.

Produces the layout the HF Qwen2-VL / Qwen2.5-VL / Qwen3-VL vision towers take: one row per
(temporal x spatial) patch in merge-window order, plus a ``grid_thw`` per image or video. Images are
one frame repeated ``temporal_patch_size`` times, as in HF's image processor (a unit test checks
equality with ``Qwen2VLImageProcessorPil``). Video frames get the same treatment, which is what the
torchvision-only HF video processors would do, so video works on machines without torchvision.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from omniret.errors import MediaError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class VisionSpec:
    """The vision tower's geometry and normalisation, read from a checkpoint's preprocessor_config.json."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD

    @property
    def factor(self) -> int:
        """Side length in pixels of one merged token (e.g. 28 for Qwen2-VL, 32 for Qwen3-VL)."""
        return self.patch_size * self.merge_size

    @classmethod
    def from_pretrained(cls, path: str | Path) -> VisionSpec:
        file = Path(path) / "preprocessor_config.json"
        if not file.is_file():
            raise FileNotFoundError(f"{file} not found: a Qwen-VL checkpoint ships its image processor config")
        cfg = json.loads(file.read_text())
        return cls(
            patch_size=int(cfg.get("patch_size", 14)),
            temporal_patch_size=int(cfg.get("temporal_patch_size", 2)),
            merge_size=int(cfg.get("merge_size", 2)),
            image_mean=tuple(cfg.get("image_mean", OPENAI_CLIP_MEAN)),
            image_std=tuple(cfg.get("image_std", OPENAI_CLIP_STD)),
        )

    def to_json(self, min_pixels: int, max_pixels: int, processor_class: str) -> dict:
        """The preprocessor_config.json a Qwen-VL checkpoint carries (HF field names)."""
        return {
            "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": processor_class,
            "do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True,
            "rescale_factor": 1 / 255,
            "resample": 3,
            "min_pixels": min_pixels, "max_pixels": max_pixels,
            "size": {"shortest_edge": min_pixels, "longest_edge": max_pixels},
            "patch_size": self.patch_size, "temporal_patch_size": self.temporal_patch_size,
            "merge_size": self.merge_size,
            "image_mean": list(self.image_mean), "image_std": list(self.image_std),
        }


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Target size with both sides multiples of ``factor`` and area within [min_pixels, max_pixels].

    The same rule as Qwen's reference preprocessing, so token counts match the released models.
    """
    if min(height, width) <= 0:
        raise ValueError(f"empty image ({width}x{height})")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.0f}:1 exceeds 200:1")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return max(h_bar, factor), max(w_bar, factor)


def patchify(frames: np.ndarray, spec: VisionSpec) -> tuple[np.ndarray, tuple[int, int, int]]:
    """(T, C, H, W) normalised float frames -> (grid_t*grid_h*grid_w, C*tp*p*p) patches and grid_thw.

    T is padded to a multiple of the temporal patch by repeating the last frame.
    """
    tp, p, m = spec.temporal_patch_size, spec.patch_size, spec.merge_size
    if frames.shape[0] % tp:
        pad = np.repeat(frames[-1:], tp - frames.shape[0] % tp, axis=0)
        frames = np.concatenate([frames, pad], axis=0)
    t, c, h, w = frames.shape
    gt, gh, gw = t // tp, h // p, w // p
    patches = frames.reshape(gt, tp, c, gh // m, m, p, gw // m, m, p)
    patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return patches.reshape(gt * gh * gw, c * tp * p * p), (gt, gh, gw)


def _normalise(images: list[Image.Image], size: tuple[int, int], spec: VisionSpec) -> np.ndarray:
    height, width = size
    mean = np.asarray(spec.image_mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.image_std, dtype=np.float32)[:, None, None]
    out = []
    for img in images:
        resized = img.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
        arr = np.asarray(resized, dtype=np.float32).transpose(2, 0, 1) / 255.0
        out.append((arr - mean) / std)
    return np.stack(out)


def image_patches(image: Image.Image, spec: VisionSpec, min_pixels: int, max_pixels: int,
                  source: str = "image") -> tuple[np.ndarray, tuple[int, int, int]]:
    """One image -> (patches, grid_thw) with grid_t == 1."""
    try:
        size = smart_resize(image.height, image.width, spec.factor, min_pixels, max_pixels)
    except ValueError as exc:
        raise MediaError(source, str(exc)) from exc
    frames = _normalise([image], size, spec)
    return patchify(np.repeat(frames, spec.temporal_patch_size, axis=0), spec)


def video_frame_size(height: int, width: int, num_frames: int, spec: VisionSpec, min_pixels: int,
                     max_pixels: int, total_pixels: int) -> tuple[int, int]:
    """Per-frame size: capped by max_pixels and by an equal share of the whole video's pixel budget."""
    share = total_pixels / max(num_frames, 1) * spec.temporal_patch_size
    cap = max(min(max_pixels, share), min_pixels * 1.05)
    return smart_resize(height, width, spec.factor, min_pixels, int(cap))


def video_patches(frames: np.ndarray, spec: VisionSpec, min_pixels: int, max_pixels: int,
                  total_pixels: int, source: str = "video") -> tuple[np.ndarray, tuple[int, int, int]]:
    """(T, H, W, 3) uint8 RGB frames -> (patches, grid_thw); all frames share one size."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise MediaError(source, f"expected frames of shape (T, H, W, 3), got {tuple(frames.shape)}")
    t, h, w, _ = frames.shape
    try:
        size = video_frame_size(h, w, t, spec, min_pixels, max_pixels, total_pixels)
    except ValueError as exc:
        raise MediaError(source, str(exc)) from exc
    images = [Image.fromarray(frame) for frame in frames]
    return patchify(_normalise(images, size, spec), spec)


def merged_tokens(grid_thw: tuple[int, int, int], spec: VisionSpec) -> int:
    """Number of LLM tokens a visual contributes after the merger."""
    t, h, w = grid_thw
    return t * h * w // (spec.merge_size ** 2)

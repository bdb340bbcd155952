"""Pixel preprocessing equals HF's Qwen2-VL image processor; video patchify layout and budgets."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from omniret.errors import MediaError
from omniret.models.vision import VisionSpec, image_patches, patchify, smart_resize, video_patches


def _random_image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("size", [(100, 60), (333, 517), (20, 20)])
def test_image_patches_equal_hf_processor(size):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image = _random_image(*size)
    min_pixels, max_pixels = 4 * 28 * 28, 64 * 28 * 28
    hf = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)
    ref = hf(images=[image], return_tensors="np")
    patches, grid = image_patches(image, VisionSpec(), min_pixels, max_pixels)
    assert list(grid) == ref["image_grid_thw"][0].tolist()
    np.testing.assert_allclose(patches, ref["pixel_values"], atol=1e-5)


def test_smart_resize_respects_budget_and_factor():
    h, w = smart_resize(1000, 3000, 28, 4 * 28 * 28, 256 * 28 * 28)
    assert h % 28 == 0 and w % 28 == 0 and h * w <= 256 * 28 * 28
    assert abs(w / h - 3) < 0.3
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(1, 500, 28, 1, 10**7)


def test_patchify_layout_roundtrip():
    """Each patch row holds (channel, temporal, py, px) pixels of one patch in merge-window order."""
    spec = VisionSpec(patch_size=2, temporal_patch_size=2, merge_size=2)
    frames = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    patches, grid = patchify(frames, spec)
    assert grid == (1, 2, 2) and patches.shape == (4, 3 * 2 * 2 * 2)
    # Patch (row 0, col 1) of the merge window is the second row; its first values are
    # channel 0, frame 0, pixels [0:2, 2:4].
    np.testing.assert_array_equal(patches[1][:4], frames[0, 0, 0:2, 2:4].reshape(-1))
    np.testing.assert_array_equal(patches[1][4:8], frames[1, 0, 0:2, 2:4].reshape(-1))


def test_video_patches_pad_odd_frame_counts_and_share_budget():
    spec = VisionSpec()
    frames = np.zeros((5, 112, 112, 3), dtype=np.uint8)
    patches, grid = video_patches(frames, spec, 4 * 28 * 28, 64 * 28 * 28, 10**9)
    assert grid[0] == 3  # 5 frames padded to 6, two per temporal patch
    assert patches.shape[0] == grid[0] * grid[1] * grid[2]
    _, small = video_patches(frames, spec, 4 * 28 * 28, 64 * 28 * 28, total_pixels=5 * 56 * 56)
    assert small[1] * small[2] < grid[1] * grid[2]


def test_bad_video_array_is_a_media_error():
    with pytest.raises(MediaError, match="clip"):
        video_patches(np.zeros((0, 10, 10, 3), np.uint8), VisionSpec(), 1, 10**6, 10**9, source="clip")

"""Read a video stored as a folder of frame images (MMEB-V2 ships its videos this way).

Frames are the image files of the folder in natural order (``2.jpg`` before ``10.jpg``). With no
timing information, the folder is treated as a video of ``frame_rate`` frames per second and sampled
with the same rule as real videos (:func:`omniret.media.video.frame_indices`), so ``num_frames=8``
picks 8 uniformly spread frames. Problems (no frames, a broken frame) raise
:class:`~omniret.errors.MediaError` naming the folder or the frame.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from omniret.errors import MediaError
from omniret.media.image import load_image
from omniret.media.video import VideoFrames, VideoInfo, frame_indices

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def frame_files(folder: str | os.PathLike[str]) -> list[Path]:
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return sorted(files, key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)])


def read_frame_dir(folder: str | os.PathLike[str], *, start: float | None = None, end: float | None = None,
                   num_frames: int | None = None, fps: float = 1.0, max_frames: int = 64,
                   max_bytes: int = 200 * 2**20, frame_rate: float = 1.0) -> VideoFrames:
    """Sample frames from a frame folder, as :func:`omniret.media.video.read_frames` does from a file."""
    source = str(folder)
    if not Path(folder).is_dir():
        raise MediaError(source, "not a folder of frames")
    files = frame_files(folder)
    if not files:
        raise MediaError(source, "folder holds no frame images")
    info = VideoInfo(num_frames=len(files), fps=frame_rate, duration=len(files) / frame_rate)
    try:
        indices = frame_indices(info, start=start, end=end, num_frames=num_frames, fps=fps, max_frames=max_frames)
    except ValueError as exc:
        raise MediaError(source, str(exc)) from None
    images = [load_image(files[i], max_bytes=max_bytes) for i in indices]
    size = images[0].size
    frames = np.stack([np.asarray(im if im.size == size else im.resize(size)) for im in images])
    t0 = 0.0 if start is None else float(start)
    t1 = info.duration if end is None else min(float(end), info.duration)
    return VideoFrames(frames=frames, timestamps=indices / frame_rate, fps=len(indices) / (t1 - t0), start=t0, end=t1)

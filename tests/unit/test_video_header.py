"""Frame sizes read from container headers (MP4, AVI, Matroska/WebM) without decoding; hostile headers."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from serving_fixtures import forge_mp4

from omniret.errors import MediaError
from omniret.media import synth, video
from omniret.media.video_header import declared_size


def _declared(data: bytes) -> tuple[int, int] | None:
    return declared_size(io.BytesIO(data), len(data))


@pytest.mark.parametrize(("name", "fourcc"), [("clip.avi", "MJPG"), ("clip.mkv", "XVID"), ("clip.mp4", "mp4v")])
def test_declared_size_of_each_container(tmp_path, name, fourcc):
    writer = cv2.VideoWriter(str(tmp_path / name), cv2.VideoWriter_fourcc(*fourcc), 8.0, (80, 48))
    for _ in range(3):
        writer.write(np.zeros((48, 80, 3), np.uint8))
    writer.release()
    assert _declared((tmp_path / name).read_bytes()) == (80, 48)


def test_forged_and_broken_headers(tmp_path):
    clip = synth.write_moving_video(tmp_path / "c.mp4", shape="circle", color="red", direction="up",
                                    num_frames=4, size=(64, 32), faststart=True)
    data = clip.read_bytes()
    assert _declared(data) == (64, 32)
    assert _declared(forge_mp4(data, size=(40000, 30000))) == (40000, 30000)
    assert _declared(b"\x00\x00\x00\x08ftyp" + b"\xff" * 64) is None  # box sizes that make no sense
    assert _declared(b"RIFF\x00\x00\x00\x00AVI ") is None
    assert _declared(b"") is None
    big = tmp_path / "big.mp4"
    big.write_bytes(forge_mp4(data, size=(40000, 30000)))
    with pytest.raises(MediaError, match="40000x30000"):
        video.probe_video(big, max_frame_pixels=3840 * 2160)
    with pytest.raises(MediaError, match="40000x30000"):
        video.read_frames(big, max_frame_pixels=3840 * 2160)


def test_a_video_that_declares_no_size_is_checked_on_its_first_frame(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 8.0, (80, 48))
    for _ in range(3):
        writer.write(np.zeros((48, 80, 3), np.uint8))
    writer.release()
    hidden = tmp_path / "hidden.avi"
    hidden.write_bytes(path.read_bytes().replace(b"avih", b"avix", 1))  # the main header is unreadable now
    assert _declared(hidden.read_bytes()) is None
    assert video.read_frames(hidden, num_frames=2, max_frame_pixels=80 * 48).frames.shape == (2, 48, 80, 3)
    with pytest.raises(MediaError, match="decoded frame size 80x48"):
        video.read_frames(hidden, num_frames=2, max_frame_pixels=80 * 48 - 1)

"""Tests of omniret.media: image/video/PDF decoding, refusals of bad input, sniffing and synth media."""

from __future__ import annotations

import io
import itertools
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from omniret.errors import MediaError
from omniret.media import pdf, synth, video
from omniret.media.image import load_image
from omniret.media.sniff import detect_kind, sniff_file
from omniret.media.video import VideoInfo, frame_indices, plan_clips


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of generated media shared by the tests of this module (generating is the slow part)."""
    root = tmp_path_factory.mktemp("media")
    for direction in synth.DIRECTIONS:
        synth.write_moving_video(root / f"{direction}.mp4", shape="square", color="red", direction=direction)
    synth.write_pdf(
        root / "doc.pdf",
        ["apples and oranges", "bicycles need wheels", "the ocean is deep"],
        title="Sample Title",
    )
    synth.write_broken_files(root / "broken")
    return root


def _png_bytes(im: Image.Image, **save_args) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", **save_args)
    return buf.getvalue()


def _encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose valid header claims ``width`` x ``height`` but that holds almost no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(16)))


def _refusal(excinfo: pytest.ExceptionInfo[MediaError], source: str, *words: str) -> None:
    err = excinfo.value
    assert err.source == source
    for word in words:
        assert word in err.reason.lower(), err.reason


# ---------------------------------------------------------------------------------------------- images


def test_load_image_rgba_composites_on_white(tmp_path: Path) -> None:
    im = Image.new("RGBA", (30, 20), (255, 0, 0, 255))
    im.putpixel((0, 0), (0, 0, 255, 0))  # fully transparent -> background
    im.putpixel((1, 0), (0, 0, 0, 128))  # half transparent black -> mid grey
    path = tmp_path / "rgba.png"
    im.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (30, 20)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert all(abs(c - 127) <= 1 for c in out.getpixel((1, 0)))
    assert out.getpixel((5, 5)) == (255, 0, 0)


def test_load_image_palette_grey_16bit_cmyk_bilevel() -> None:
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 200, 0] + [9, 9, 9] * 255)
    pal.putpixel((0, 0), 1)
    pal_t = _png_bytes(pal, transparency=1)
    assert load_image(pal_t).getpixel((0, 0)) == (255, 255, 255)  # transparent palette entry
    assert load_image(pal_t).getpixel((3, 3)) == (0, 200, 0)

    grey = load_image(_png_bytes(Image.new("L", (5, 7), 77)))
    assert grey.mode == "RGB" and grey.size == (5, 7) and grey.getpixel((0, 0)) == (77, 77, 77)

    wide = Image.fromarray(np.array([[65535, 32896, 0]], dtype=np.uint16))
    assert wide.mode.startswith("I;16")
    out = load_image(_png_bytes(wide))
    assert [out.getpixel((x, 0)) for x in range(3)] == [(255,) * 3, (128,) * 3, (0,) * 3]

    cmyk = load_image(_encode(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG"))
    r, g, b = cmyk.getpixel((1, 1))
    assert r > 200 and g < 60 and b < 60

    assert load_image(Image.new("1", (3, 3), 1)).getpixel((1, 1)) == (255, 255, 255)
    assert load_image(Image.new("LA", (3, 3), (0, 0))).getpixel((1, 1)) == (255, 255, 255)


def test_load_image_leaves_given_pil_image_alone() -> None:
    src = Image.new("RGBA", (6, 4), (0, 0, 255, 255))
    out = load_image(src)
    assert src.mode == "RGBA" and out.mode == "RGB" and out is not src
    rgb = Image.new("RGB", (6, 4))
    assert load_image(rgb) is not rgb


def test_load_image_applies_exif_orientation() -> None:
    stored = Image.new("RGB", (40, 20), (255, 255, 255))
    stored.paste((255, 0, 0), (0, 0, 10, 10))  # red block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    out = load_image(_encode_with_exif(stored, exif))
    assert out.size == (20, 40)
    r, g, b = out.getpixel((15, 4))  # the top-left block is now at the top-right
    assert r > 200 and g < 60 and b < 60
    assert out.getpixel((4, 4))[1] > 200  # and the top-left is white


def _encode_with_exif(im: Image.Image, exif: Image.Exif) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=95, exif=exif)
    return buf.getvalue()


def test_load_image_first_frame_of_gif() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((0, 0, 255), (255, 0, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    assert load_image(buf.getvalue()).getpixel((2, 2)) == (0, 0, 255)


def test_load_image_refusals(tmp_path: Path, media: Path) -> None:
    with pytest.raises(MediaError) as e:
        load_image(tmp_path / "missing.png")
    _refusal(e, str(tmp_path / "missing.png"), "not found")

    with pytest.raises(MediaError) as e:
        load_image(tmp_path)
    _refusal(e, str(tmp_path), "not a regular file")

    with pytest.raises(MediaError) as e:
        load_image(media / "broken" / "empty.png")
    _refusal(e, str(media / "broken" / "empty.png"), "empty")

    with pytest.raises(MediaError) as e:
        load_image(b"")
    _refusal(e, "<bytes>", "empty")

    png = _png_bytes(Image.new("RGB", (64, 64), (1, 2, 3)))
    with pytest.raises(MediaError) as e:
        load_image(png, max_bytes=len(png) - 1, name="upload 3")
    _refusal(e, "upload 3", "too large")

    with pytest.raises(MediaError) as e:
        load_image(png, max_pixels=64 * 64 - 1)
    _refusal(e, "<bytes>", "too many pixels")

    with pytest.raises(MediaError) as e:
        load_image(media / "broken" / "corrupt.jpg")
    _refusal(e, str(media / "broken" / "corrupt.jpg"), "corrupt")

    jpeg = _encode(
        synth.draw_scene([{"shape": "circle", "color": "red", "x": 50, "y": 50, "size": 60}]), "JPEG"
    )
    with pytest.raises(MediaError) as e:
        load_image(jpeg[: len(jpeg) // 2])
    _refusal(e, "<bytes>", "truncated")

    with pytest.raises(MediaError) as e:
        load_image(media / "broken" / "notes.bin")
    _refusal(e, str(media / "broken" / "notes.bin"), "not a recognised image")

    with pytest.raises(MediaError) as e:
        load_image(12345)  # type: ignore[arg-type]
    assert "unsupported" in e.value.reason


def test_load_image_checks_pixels_before_decoding() -> None:
    with pytest.raises(MediaError) as e:
        load_image(_png_header_only(100, 100))
    _refusal(e, "<bytes>", "truncated")
    # The same almost-empty PNG, larger: "too many pixels" rather than "truncated" shows that the
    # size is checked from the header before any decoding.
    with pytest.raises(MediaError) as e:
        load_image(_png_header_only(9000, 9000))
    _refusal(e, "<bytes>", "too many pixels")
    # Past PIL's own bomb limit, PIL refuses while parsing the header; still a MediaError.
    with pytest.raises(MediaError) as e:
        load_image(_png_header_only(20000, 20000), max_pixels=10**9)
    _refusal(e, "<bytes>", "too many pixels")


# ---------------------------------------------------------------------------------------------- video indices


def test_frame_indices_uniform_num_frames() -> None:
    info = VideoInfo(num_frames=100, fps=25.0, duration=4.0)
    assert frame_indices(info, num_frames=4).tolist() == [12, 37, 62, 87]
    assert frame_indices(info, num_frames=1).tolist() == [50]
    # num_frames wins over max_frames, and repeats frames when the video is too short.
    short = VideoInfo(num_frames=4, fps=4.0, duration=1.0)
    assert frame_indices(short, num_frames=8, max_frames=2).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_frame_indices_fps_sampling_and_cap() -> None:
    info = VideoInfo(num_frames=100, fps=25.0, duration=4.0)
    assert frame_indices(info).tolist() == [12, 37, 62, 87]  # 1 fps: one frame per second
    assert frame_indices(info, fps=2.0).tolist() == [6, 18, 31, 43, 56, 68, 81, 93]
    assert frame_indices(info, fps=25.0, max_frames=10).tolist() == list(range(5, 100, 10))
    assert len(frame_indices(info, fps=100.0)) == 64  # default cap
    assert frame_indices(info, start=0.0, end=0.1).tolist() == [1]  # always at least one frame


def test_frame_indices_window() -> None:
    info = VideoInfo(num_frames=100, fps=25.0, duration=4.0)
    assert frame_indices(info, start=1.0, end=2.0, num_frames=2).tolist() == [31, 43]
    assert frame_indices(info, start=3.0, end=10.0).tolist() == [87]  # end clipped to the video
    idx = frame_indices(info, start=2.0, num_frames=7)
    assert idx.dtype == np.int64 and (np.diff(idx) >= 0).all() and idx.min() >= 50 and idx.max() <= 99


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start": 2.0, "end": 2.0}, "empty time window"),
        ({"start": 5.0}, "beyond the end"),
        ({"start": -1.0}, "start must be"),
        ({"num_frames": 0}, "num_frames"),
        ({"fps": 0.0}, "fps"),
        ({"max_frames": 0}, "max_frames"),
    ],
)
def test_frame_indices_rejects(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        frame_indices(VideoInfo(num_frames=100, fps=25.0, duration=4.0), **kwargs)


def test_plan_clips() -> None:
    assert plan_clips(10, 4) == [(0.0, 4.0), (4.0, 8.0), (8.0, 10.0)]  # 2 s left = half a clip: kept
    assert plan_clips(9, 4) == [(0.0, 4.0), (4.0, 9.0)]  # 1 s left: merged
    assert plan_clips(8, 4) == [(0.0, 4.0), (4.0, 8.0)]
    assert plan_clips(3, 4) == [(0.0, 3.0)]  # shorter than one clip
    assert plan_clips(1.9, 1.0) == [(0.0, 1.0), (1.0, 1.9)]
    assert plan_clips(12.0000001, 4) == [(0.0, 4.0), (4.0, 8.0), (8.0, 12.0000001)]
    for duration in np.linspace(0.3, 30, 37):
        clips = plan_clips(float(duration), 2.5)
        assert clips[0][0] == 0.0 and clips[-1][1] == pytest.approx(duration)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(clips))
        lengths = [b - a for a, b in clips]
        assert len(clips) == 1 or min(lengths) >= 1.25 - 1e-9
    for bad in ((0, 4), (10, 0), (-1, 4)):
        with pytest.raises(ValueError):
            plan_clips(*bad)


# ---------------------------------------------------------------------------------------------- video files


def _centroids(frames: np.ndarray) -> np.ndarray:
    """(T, 2) x, y centroid of the non-white pixels of each frame."""
    mask = (255 - frames.astype(np.int32)).sum(axis=-1) > 150
    ys, xs = np.mgrid[: frames.shape[1], : frames.shape[2]]
    return np.array([[xs[m].mean(), ys[m].mean()] for m in mask])


@pytest.mark.parametrize(
    ("direction", "axis", "sign"), [("right", 0, 1), ("left", 0, -1), ("down", 1, 1), ("up", 1, -1)]
)
def test_moving_video_reads_back(media: Path, direction: str, axis: int, sign: int) -> None:
    path = media / f"{direction}.mp4"
    assert video.probe_video(path) == VideoInfo(num_frames=16, fps=8.0, duration=2.0, width=128, height=128)
    clip = video.read_frames(path, num_frames=16)
    assert clip.frames.shape == (16, 128, 128, 3) and clip.frames.dtype == np.uint8
    np.testing.assert_allclose(clip.timestamps, np.arange(16) / 8.0)
    centres = _centroids(clip.frames)
    steps = sign * np.diff(centres[:, axis])
    assert (steps > 0).all() and sign * (centres[-1, axis] - centres[0, axis]) > 64
    assert np.ptp(centres[:, 1 - axis]) < 2  # no drift across the direction of motion
    mask = (255 - clip.frames[0].astype(np.int32)).sum(axis=-1) > 150
    np.testing.assert_allclose(clip.frames[0][mask].mean(axis=0), synth.COLORS["red"], atol=25)


def test_read_frames_sampling_and_window(media: Path) -> None:
    path = media / "right.mp4"
    clip = video.read_frames(path)  # 1 fps over 2 s
    assert clip.frames.shape[0] == 2 and clip.timestamps.tolist() == [0.5, 1.5]
    assert (clip.fps, clip.start, clip.end) == (1.0, 0.0, 2.0)
    part = video.read_frames(path, start=1.0, end=5.0, num_frames=4)
    assert part.end == 2.0 and part.fps == 4.0
    assert ((part.timestamps >= 1.0) & (part.timestamps < 2.0)).all()
    full = video.read_frames(path, num_frames=16).frames
    np.testing.assert_array_equal(part.frames, full[[9, 11, 13, 15]])


def test_read_frames_refusals(tmp_path: Path, media: Path) -> None:
    bad = media / "broken"
    cases = [
        (tmp_path / "missing.mp4", {}, "not found"),
        (bad / "empty.png", {}, "empty"),
        (media / "up.mp4", {"max_bytes": 100}, "too large"),
        (bad / "truncated.mp4", {}, "truncated"),
        (bad / "notes.bin", {}, "cannot open as a video"),
        (bad / "corrupt.jpg", {}, "not a video"),
        (media / "doc.pdf", {}, "not a video"),
        (media / "up.mp4", {"start": 3.0}, "beyond the end"),
        (media / "up.mp4", {"start": 1.5, "end": 1.0}, "empty time window"),
    ]
    for path, kwargs, words in cases:
        with pytest.raises(MediaError) as e:
            video.read_frames(path, **kwargs)
        _refusal(e, str(path), words)
    with pytest.raises(ValueError) as e:
        video.read_frames(media / "up.mp4", num_frames=0)
    assert not isinstance(e.value, MediaError)  # a caller bug, not a bad file


def test_truncated_containers_are_refused(tmp_path: Path) -> None:
    # Formats whose index sits up front open fine when cut; their declared sizes give them away.
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    fast = synth.write_moving_video(
        tmp_path / "fast.mp4", shape="circle", color="blue", direction="up", size=(64, 64), faststart=True
    )
    assert video.probe_video(fast).num_frames == 16
    paths = [fast]
    for name, fourcc in (("clip.avi", "MJPG"), ("clip.mkv", "mp4v")):
        writer = cv2.VideoWriter(str(tmp_path / name), cv2.VideoWriter_fourcc(*fourcc), 8, (32, 32))
        for frame in noise:
            writer.write(frame)
        writer.release()
        assert video.probe_video(tmp_path / name).num_frames == 8
        paths.append(tmp_path / name)
    for path in paths:
        data = path.read_bytes()
        cut = tmp_path / f"cut-{path.name}"
        cut.write_bytes(data[: len(data) * 6 // 10])
        with pytest.raises(MediaError) as e:
            video.probe_video(cut)
        _refusal(e, str(cut), "truncated")


class _FakeReader:
    """Stands in for decord.VideoReader: opens, then fails to decode, like a damaged stream."""

    def __init__(self, path: str, num_frames: int = 10, **_: object) -> None:
        self.num_frames = num_frames

    def __len__(self) -> int:
        return self.num_frames

    def get_avg_fps(self) -> float:
        return 5.0

    def get_batch(self, indices: list[int]) -> None:
        raise RuntimeError("[10:00:00] video_reader.cc:1: Error: av_read_frame failed\n\nStack trace: ...")


def test_decode_failures_after_open_are_media_errors(media: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = media / "left.mp4"
    monkeypatch.setattr(video.decord, "VideoReader", _FakeReader)
    with pytest.raises(MediaError) as e:
        video.read_frames(path)
    _refusal(e, str(path), "cannot decode frames", "av_read_frame failed")
    assert "Stack trace" not in e.value.reason and "video_reader.cc" not in e.value.reason

    monkeypatch.setattr(video.decord, "VideoReader", lambda p, **kw: _FakeReader(p, num_frames=0))
    with pytest.raises(MediaError) as e:
        video.probe_video(path)
    _refusal(e, str(path), "no readable frames")


# ---------------------------------------------------------------------------------------------- PDF


def test_pdf_pages_render_with_text(media: Path) -> None:
    path = media / "doc.pdf"
    assert pdf.page_count(path) == 3
    pages = list(pdf.iter_pages(path, dpi=36))
    assert [p.page for p in pages] == [0, 1, 2] and {p.num_pages for p in pages} == {3}
    assert "Sample Title" in pages[0].text and "apples and oranges" in pages[0].text
    assert pages[1].text == "bicycles need wheels"
    assert "ocean" in pages[2].text and "apples" not in pages[2].text
    for p in pages:
        assert p.image.mode == "RGB" and p.image.size == (149, 210)  # A6 at half of 72 dpi
        assert np.asarray(p.image).min() < 200  # the coloured band: nothing renders blank

    page = pdf.render_page(path.read_bytes(), 1, dpi=72, text_chars=8)
    assert page.image.size == (298, 420) and page.text == "bicycles" and page.num_pages == 3


def test_pdf_refusals(tmp_path: Path, media: Path) -> None:
    bad = media / "broken"
    doc = media / "doc.pdf"
    corrupt = tmp_path / "corrupt.pdf"
    corrupt.write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 4)
    cases = [
        (lambda: pdf.render_page(bad / "encrypted.pdf", 0), str(bad / "encrypted.pdf"), "password"),
        (lambda: pdf.page_count(bad / "encrypted.pdf"), str(bad / "encrypted.pdf"), "encrypted"),
        (lambda: pdf.render_page(doc, 3), str(doc), "out of range"),
        (lambda: pdf.render_page(doc, -1), str(doc), "out of range"),
        (lambda: pdf.render_page(doc, 0, dpi=72, max_pixels=1000), str(doc), "over the limit"),
        (lambda: pdf.render_page(doc, 0, max_bytes=10), str(doc), "too large"),
        (lambda: pdf.page_count(tmp_path / "no.pdf"), str(tmp_path / "no.pdf"), "not found"),
        (lambda: pdf.page_count(bad / "empty.png"), str(bad / "empty.png"), "empty"),
        (lambda: pdf.page_count(b""), "<bytes>", "empty"),
        (lambda: pdf.page_count(bad / "notes.bin"), str(bad / "notes.bin"), "not a pdf"),
        (lambda: pdf.page_count(corrupt), str(corrupt), "corrupt"),
        (lambda: pdf.page_count(_zero_page_pdf(), name="zero"), "zero", "no pages"),
    ]
    for call, source, words in cases:
        with pytest.raises(MediaError) as e:
            call()
        _refusal(e, source, words)


def _zero_page_pdf() -> bytes:
    """A well-formed PDF whose page tree is empty (pymupdf refuses to save one)."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 3\n0000000000 65535 f \n" + b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size 3 /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


# ---------------------------------------------------------------------------------------------- sniffing


def test_detect_kind_on_generated_and_broken_files(tmp_path: Path, media: Path) -> None:
    scene = synth.draw_scene(
        [{"shape": "triangle", "color": "green", "x": 20, "y": 20, "size": 20}], size=(40, 40)
    )
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"):
        assert detect_kind(_encode(scene, fmt)) == "image", fmt
    assert sniff_file(media / "down.mp4") == "video"
    assert sniff_file(media / "doc.pdf") == "pdf"
    for name, fourcc in (("v.avi", "MJPG"), ("v.mkv", "mp4v")):
        writer = cv2.VideoWriter(str(tmp_path / name), cv2.VideoWriter_fourcc(*fourcc), 4, (16, 16))
        writer.write(np.zeros((16, 16, 3), np.uint8))
        writer.release()
        assert sniff_file(tmp_path / name) == "video", name
    expected = {
        "corrupt.jpg": "image",
        "truncated.mp4": "video",
        "encrypted.pdf": "pdf",
        "empty.png": None,
        "notes.bin": None,
    }
    assert {name: sniff_file(media / "broken" / name) for name in expected} == expected


def test_detect_kind_edge_cases(tmp_path: Path) -> None:
    assert detect_kind(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00") == "image"  # HEIF still image
    assert detect_kind(b"\x00\x00\x00\x18ftypqt  \x00\x00\x00\x00") == "video"
    assert detect_kind(b"RIFF\x00\x00\x00\x00WAVEfmt ") is None  # audio
    assert detect_kind(b"Get free stuff today") is None
    assert detect_kind(b"BMX is a sport, not a bitmap") is None
    assert detect_kind(b"\xef\xbb\xbf%PDF-1.7\n") == "pdf"  # header after a byte-order mark
    assert detect_kind(b"") is None
    with pytest.raises(MediaError) as e:
        sniff_file(tmp_path / "nope")
    _refusal(e, str(tmp_path / "nope"), "not found")


# ---------------------------------------------------------------------------------------------- synth


def test_synth_is_deterministic(tmp_path: Path, media: Path) -> None:
    objects = [
        {"shape": "circle", "color": "blue", "x": 60, "y": 60, "size": 50},
        {"shape": "square", "color": (10, 20, 30), "x": 150, "y": 100, "size": 40},
    ]
    a, b = synth.draw_scene(objects), synth.draw_scene(objects)
    assert a.tobytes() == b.tobytes() and _png_bytes(a) == _png_bytes(b)
    assert a.getpixel((60, 60)) == synth.COLORS["blue"] and a.getpixel((150, 100)) == (10, 20, 30)
    assert a.getpixel((5, 5)) == (255, 255, 255)

    pages = ["one page", "two pages"]
    first = synth.write_pdf(tmp_path / "a.pdf", pages, title="T").read_bytes()
    assert synth.write_pdf(tmp_path / "b.pdf", pages, title="T").read_bytes() == first

    again = synth.write_moving_video(tmp_path / "right.mp4", shape="square", color="red", direction="right")
    np.testing.assert_array_equal(
        video.read_frames(again, num_frames=16).frames,
        video.read_frames(media / "right.mp4", num_frames=16).frames,
    )

    described = synth.write_broken_files(tmp_path / "broken")
    assert set(described) == {"corrupt.jpg", "truncated.mp4", "encrypted.pdf", "empty.png", "notes.bin"}
    for name in ("corrupt.jpg", "notes.bin", "empty.png"):
        assert (tmp_path / "broken" / name).read_bytes() == (media / "broken" / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "broken").iterdir()) == sorted(described)  # no leftovers


def test_synth_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="shape"):
        synth.draw_scene([{"shape": "hexagon", "color": "red", "x": 1, "y": 1, "size": 1}])
    with pytest.raises(ValueError, match="colour"):
        synth.draw_scene([{"shape": "circle", "color": "teal", "x": 1, "y": 1, "size": 1}])
    with pytest.raises(ValueError, match="direction"):
        synth.moving_positions("sideways", 4, (64, 64), 16)
    assert len(synth.COLORS) >= 6 and synth.SHAPES == ("circle", "square", "triangle")

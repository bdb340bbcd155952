"""A request's work is bounded from headers before decoding; temp files go; errors stay with their request
and never show server paths (the routes in-process, no Ray)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serving_fixtures import data_uri, forge_mp4, png_bytes

from omniret.items import Item
from omniret.media import synth, video
from omniret.models.embedder import Embedder
from omniret.serving.api import InputParser, VideoUrl
from omniret.serving.backend import LocalBackend, Outcome, embed_jobs, turns
from omniret.serving.routes import create_api, public


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` with almost no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(16)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory, make_config, backbones):
    root = tmp_path_factory.mktemp("bounds")
    (root / "media").mkdir()
    cfg = make_config("qwen2_vl", f"serve.allowed_roots=[{root / 'media'}]", "serve.max_parts=4",
                      "serve.max_images=2", "serve.max_request_pixels=20000", "serve.max_instruction_chars=50",
                      "serve.max_request_bytes=200000", "media.max_video_frame_pixels=10000", "embed.progress=false")
    embedder = Embedder(backbones["qwen2_vl"], cfg.media, cfg.embed, cfg.model.template)
    app = create_api(LocalBackend(embedder), cfg)
    clip = synth.write_moving_video(root / "media" / "clip.mp4", shape="circle", color="red", direction="left",
                                    num_frames=8, size=(64, 64), fps=8)
    return {"client": TestClient(app), "app": app, "cfg": cfg, "root": root, "clip": clip, "embedder": embedder}


def _image(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def _refused(response, status: int, param: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    return error


TINY = data_uri(png_bytes(Image.new("RGB", (16, 16), "red")))


def test_parts_images_pixels_and_instruction_are_bounded(setup):
    client = setup["client"]
    post = lambda body: client.post("/v1/embeddings", json=body)  # noqa: E731
    text = {"type": "text", "text": "x"}
    _refused(post({"input": [{"content": [text] * 5}]}), 413, "input[0].content")
    _refused(post({"input": [{"content": [_image(TINY)] * 3}]}), 413, "input[0].content[2]")
    big = data_uri(png_bytes(Image.new("RGB", (100, 100), "red")))  # 10000 px each; the budget is 20000
    _refused(post({"input": [{"content": [_image(big)]}, {"content": [_image(big)]}, {"content": [_image(big)]}]}),
             413, "input[2].content[0].image_url")
    _refused(post({"input": "x", "instruction": "i" * 51}), 413, "instruction")
    _refused(post({"input": [{"content": [text], "instruction": "i" * 51}]}), 413, "input[0].instruction")
    assert post({"input": [{"content": [_image(big)]}, {"content": [_image(big)]}]}).status_code == 200


def test_a_decompression_bomb_is_refused_from_its_header(setup):
    for size in [(100_000, 100_000), (5000, 5000)]:  # over PIL's own bomb limit / over media.max_image_pixels
        body = {"input": [{"content": [_image(data_uri(png_header_only(*size)))]}]}
        response = setup["client"].post("/v1/embeddings", json=body)
        assert response.status_code in (400, 413), response.text
        assert response.json()["error"]["param"] == "input[0].content[0].image_url"


def test_videos_with_huge_declared_frames_are_refused_before_decoding(setup):
    forged = forge_mp4(setup["clip"].read_bytes(), size=(20000, 20000))
    body = {"input": [{"content": [{"type": "video_url", "video_url": {"url": data_uri(forged, "video/mp4")}}]}]}
    error = _refused(setup["client"].post("/v1/embeddings", json=body), 400, "input[0].content[0].video_url")
    assert "20000x20000" in error["message"]
    with pytest.raises(Exception, match="declared frame size"):
        video.read_frames(_write(setup["root"] / "forged.mp4", forged), max_frame_pixels=10000)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_a_forged_frame_rate_cannot_shorten_a_video(setup):
    fast = _write(setup["root"] / "fast.mp4", forge_mp4(setup["clip"].read_bytes(), timescale_factor=1000))
    info = video.probe_video(fast)
    assert info.fps == video.SANE_FPS[1] and info.duration == pytest.approx(8 / video.SANE_FPS[1])
    assert video.probe_video(setup["clip"]).duration == pytest.approx(1.0)


def test_request_video_files_are_deleted(setup, tmp_path):
    parser = InputParser(setup["cfg"].serve, setup["cfg"].media, tmp_path)
    ref = parser.video(VideoUrl(url=data_uri(setup["clip"].read_bytes(), "video/mp4"), num_frames=2), "video")
    assert Path(ref.path).is_file() and Path(ref.path).parent == tmp_path
    assert parser.pixels == 2 * 64 * 64  # the frames asked for at the declared 64x64
    with pytest.raises(Exception, match="max_request_pixels"):  # 8 more frames: over the 20000 budget
        parser.video(VideoUrl(url=data_uri(setup["clip"].read_bytes(), "video/mp4")), "video")
    assert len(list(tmp_path.iterdir())) == 2
    parser.close()
    assert list(tmp_path.iterdir()) == []
    # through the routes: the request's scratch folder is empty afterwards
    url = data_uri(setup["clip"].read_bytes(), "video/mp4")
    body = {"input": [{"content": [{"type": "video_url", "video_url": {"url": url, "num_frames": 2}}]}]}
    assert setup["client"].post("/v1/embeddings", json=body).status_code == 200
    assert list(Path(setup["app"].state.scratch).iterdir()) == []


def test_chunked_oversized_body_is_413(setup):
    def chunks():
        for _ in range(30):
            yield b"x" * 10_000

    response = setup["client"].post("/v1/embeddings", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["param"] == "body"
    assert setup["client"].post("/v1/embeddings", json={"input": "ok"}).status_code == 200


def test_error_bodies_carry_no_server_paths(setup):
    root = setup["root"] / "media"
    broken = _write(root / "broken.mp4", setup["clip"].read_bytes()[:300])
    body = {"input": [{"content": [{"type": "video_url", "video_url": {"url": str(broken)}}]}]}
    response = setup["client"].post("/v1/embeddings", json=body)
    assert 400 <= response.status_code < 500
    assert str(setup["root"]) not in response.text and "/tmp" not in response.text
    assert public("cannot read /srv/data/x.mp4 (/srv/data/x.mp4)") == "cannot read <file>"


def test_any_exception_stays_with_its_request(setup):
    embedder = setup["embedder"]
    good = [Item(text="a red circle", name="input[0]")]
    bad = [Item(text=12345, name="input[0]")]  # not a string: the tokenizer raises TypeError
    broken = [Item(images=[b"\x89PNG\r\n\x1a\n" + b"\0" * 40], name="input[0]")]
    outcomes = embed_jobs(embedder, [(good, None, 0), (bad, None, 0), (broken, 8, 0), (good, 8, 0)], budget=1)
    expected = embedder.encode(["a red circle"], progress=False)
    np.testing.assert_allclose(outcomes[0].values, expected, atol=1e-6)
    assert outcomes[1].values is None and outcomes[1].status == 500
    assert outcomes[2].values is None and outcomes[2].status == 400
    assert outcomes[3].values.shape == (1, 8)
    assert isinstance(outcomes[1], Outcome)


def test_turns_keep_each_within_the_budget():
    assert turns([5, 5, 5], 10) == [[0, 1], [2]]
    assert turns([30, 1, 1], 10) == [[0], [1, 2]]
    assert turns([], 10) == []


def test_request_metrics_are_labelled_by_route_not_by_raw_path(setup):
    seen = []
    app = create_api(LocalBackend(setup["embedder"]), setup["cfg"], on_request=lambda p, s: seen.append((p, s)))
    client = TestClient(app)
    assert client.get("/v1/ingest/j\u00f6b-\u2603").status_code == 503  # this app has no ingestor
    assert client.get("/no/such/\u00e9").status_code == 404
    assert client.post("/v1/embeddings", json={"input": "x"}).status_code == 200
    assert seen == [("/v1/ingest/{job_id}", 503), ("unmatched", 404), ("/v1/embeddings", 200)]


def test_pdf_pages_are_sized_from_the_page_tree(setup):
    pdf = synth.write_pdf(setup["root"] / "media" / "one.pdf", ["only page"])
    from omniret.serving.api import PageUrl

    roomy = setup["cfg"].serve.model_copy(update={"max_request_pixels": 10**8})
    parser = InputParser(roomy, setup["cfg"].media)

    parser.page(PageUrl(url=str(pdf), page=0), "pdf_page")
    import pymupdf

    with pymupdf.open(pdf) as doc:  # the page's size in points, at media.pdf_dpi
        rect = doc[0].rect
    scale = setup["cfg"].media.pdf_dpi / 72
    assert parser.pixels == round(rect.width * scale) * round(rect.height * scale)
    body = {"input": [{"content": [{"type": "pdf_page", "pdf_page": {"url": str(pdf), "page": 3}}]}]}
    error = _refused(setup["client"].post("/v1/embeddings", json=body), 400, "input[0].content[0].pdf_page.page")
    assert "1 pages" in error["message"]


def test_a_merged_forward_pass_that_fails_is_retried_request_by_request(setup):
    """Fault injection: the model raises (as on running out of memory) whenever a batch holds the long
    item; the other requests merged with it still get their vectors."""
    from omniret.models.embedder import Embedder

    class FailsOnLongItems(Embedder):
        def encode_prepared(self, encoded, dimensions=None, progress=None, multivector=None):
            if any(len(e) > 100 for e in encoded):
                raise RuntimeError("out of memory")
            return super().encode_prepared(encoded, dimensions, progress, multivector)

    real = setup["embedder"]
    model = FailsOnLongItems(real.backbone, real.encoder.media, real.embed_cfg, real.template.name)
    short, long = [Item(text="a red circle", name="input[0]")], [Item(text="word " * 200, name="input[0]")]
    outcomes = embed_jobs(model, [(short, None, 0), (long, None, 0), (short, 4, 0)])
    np.testing.assert_allclose(outcomes[0].values, real.encode(["a red circle"], progress=False), atol=1e-6)
    assert outcomes[1].values is None and outcomes[1].status == 500
    assert outcomes[2].values.shape == (1, 4)
    # Jobs asking for token states are embedded apart and get the pooled vector first, then K states.
    mixed = embed_jobs(model, [(short, None, 0, (3, "last")), (short, 4, 0), (long, None, 0, (3, "last"))])
    assert mixed[0].values.shape == (1, 4, real.dim) and mixed[1].values.shape == (1, 4)
    np.testing.assert_allclose(mixed[0].values[:, 0], outcomes[0].values, atol=1e-6)
    assert mixed[2].values is None and mixed[2].status == 500

"""Embedder behaviour on the tiny models: padding invariance, norms, Matryoshka, video, PDF pages, errors."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from omniret.errors import MediaError
from omniret.items import Item, PageRef, VideoRef
from omniret.media import synth
from omniret.models.embedder import Embedder
from omniret.models.pooling import (
    POOLING_FILE,
    matryoshka,
    mean_pool,
    normalize,
    pool,
    save_pooling,
    saved_pooling,
)

FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    video = synth.write_moving_video(root / "move.mp4", shape="circle", color="red", direction="right",
                                     num_frames=16, size=(112, 112), fps=8)
    pdf = synth.write_pdf(root / "doc.pdf", ["red circles everywhere", "blue squares moving left"])
    broken = synth.write_broken_files(root / "broken")
    return {"video": video, "pdf": pdf, "broken": root / "broken", "broken_names": broken}


def _items(media):
    return [
        "short",
        Item(text="a much longer text about three red circles moving to the left", instruction="Find it"),
        Item(text="mixed", images=[Image.new("RGB", (80, 50), "red"), Image.new("RGB", (50, 80), "blue")]),
        Item(video=VideoRef(str(media["video"]))),
        Item(page=PageRef(str(media["pdf"]), 1)),
    ]


def _embedder(backbones, family, **kwargs) -> Embedder:
    return Embedder(backbones[family], **kwargs)


@pytest.mark.parametrize("family", FAMILIES)
def test_left_and_right_padding_give_the_same_embedding(family, backbones, media):
    embedder = _embedder(backbones, family)
    encoded = embedder.prepare(_items(media))
    left, right = (embedder.encoder.collate(encoded, side) for side in ("left", "right"))
    assert not torch.equal(left["input_ids"], right["input_ids"])  # the padding really moved
    with torch.no_grad():
        torch.testing.assert_close(embedder.forward(left), embedder.forward(right), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_unit_norm_and_batch_equals_one_by_one(family, backbones, media):
    embedder = _embedder(backbones, family)
    items = _items(media)
    batched = embedder.encode(items)
    single = np.stack([embedder.encode([item])[0] for item in items])
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(batched, single, atol=1e-5)
    # distinct inputs give distinct vectors
    assert np.abs(batched[:, None] - batched[None]).sum(-1)[np.triu_indices(len(items), 1)].min() > 1e-3


def test_matryoshka_truncates_then_renormalises(backbones, media):
    embedder = _embedder(backbones, "qwen2_vl")
    items = _items(media)[:3]
    full = embedder.encode(items)
    short = embedder.encode(items, dimensions=16)
    assert short.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-5)
    expected = full[:, :16] / np.linalg.norm(full[:, :16], axis=1, keepdims=True)
    np.testing.assert_allclose(short, expected, atol=1e-5)
    with pytest.raises(ValueError):
        matryoshka(normalize(torch.ones(2, 8)), 9)


@pytest.mark.parametrize("family", FAMILIES)
def test_video_uses_the_configured_frame_count(family, backbones, media, make_config):
    cfg = make_config(family, "media.video_frames=4")
    embedder = Embedder(backbones[family], cfg.media)
    encoded = embedder.encoder.encode(Item(video=VideoRef(str(media["video"]))))
    (visual,) = encoded.visuals
    assert visual.kind == "video" and visual.grid_thw[0] == 2  # 4 frames / temporal patch 2
    video_id = embedder.encoder.video_id
    assert encoded.input_ids.count(video_id) == visual.grid_thw[0] * visual.grid_thw[1] * visual.grid_thw[2] // 4
    if family == "qwen3_vl":  # one timestamped block per temporal patch
        text = backbones[family].tokenizer.decode(encoded.input_ids)
        assert text.count("seconds>") == 2
    vector = embedder.encode([Item(video=VideoRef(str(media["video"])))])
    assert np.isfinite(vector).all()


def test_video_clip_window_changes_the_embedding(backbones, media):
    embedder = _embedder(backbones, "qwen2_vl")
    first, second = embedder.encode([Item(video=VideoRef(str(media["video"]), 0.0, 1.0)),
                                     Item(video=VideoRef(str(media["video"]), 1.0, 2.0))])
    assert float(first @ second) < 1 - 1e-4


def test_rzen_template_feeds_video_frames_as_images(backbones, media, make_config):
    cfg = make_config("qwen2_vl", "media.video_frames=4")
    embedder = Embedder(backbones["qwen2_vl"], cfg.media, template="rzen_embed")
    encoded = embedder.encoder.encode(Item(video=VideoRef(str(media["video"]))))
    assert [v.kind for v in encoded.visuals] == ["image"] * 4


def test_pdf_page_embeds_image_and_text(backbones, media):
    embedder = _embedder(backbones, "qwen2_vl")
    encoded = embedder.encoder.encode(Item(page=PageRef(str(media["pdf"]), 1)))
    assert [v.kind for v in encoded.visuals] == ["image"]
    assert "blue squares moving left" in backbones["qwen2_vl"].tokenizer.decode(encoded.input_ids)
    p0, p1 = embedder.encode([Item(page=PageRef(str(media["pdf"]), 0)), Item(page=PageRef(str(media["pdf"]), 1))])
    assert float(p0 @ p1) < 1 - 1e-4


@pytest.mark.parametrize("name", ["corrupt.jpg", "truncated.mp4", "encrypted.pdf", "empty.png"])
def test_broken_media_raise_a_typed_error_naming_the_item(name, backbones, media):
    embedder = _embedder(backbones, "qwen2_vl")
    path = str(media["broken"] / name)
    item = {"corrupt.jpg": Item(images=[path], name=name), "truncated.mp4": Item(video=path, name=name),
            "encrypted.pdf": Item(page=PageRef(path, 0), name=name), "empty.png": Item(images=[path], name=name)}[name]
    with pytest.raises(MediaError) as info:
        embedder.encode([item])
    assert name in str(info.value) and info.value.reason


def test_empty_and_oversized_inputs_are_refused(backbones, make_config):
    with pytest.raises(MediaError, match="empty item"):
        _embedder(backbones, "qwen2_vl").encode([Item(text="  ")])
    cfg = make_config("qwen2_vl", "media.max_image_pixels=1000")
    embedder = Embedder(backbones["qwen2_vl"], cfg.media)
    with pytest.raises(MediaError, match="big"):
        embedder.encode([Item(images=[Image.new("RGB", (100, 100))], name="big")])


def test_lenient_encoding_keeps_the_good_items(backbones, media):
    embedder = _embedder(backbones, "qwen2_vl")
    items = ["good one", Item(images=[str(media["broken"] / "corrupt.jpg")], name="bad"), "good two"]
    vectors, kept, errors = embedder.encode_lenient(items)
    assert kept == [0, 2] and vectors.shape[0] == 2 and [e.source.split(" (")[0] for e in errors] == ["bad image 0"]
    np.testing.assert_allclose(vectors, embedder.encode(["good one", "good two"]), atol=1e-6)


def test_text_is_truncated_to_max_length_keeping_the_pooled_suffix(backbones):
    embedder = Embedder(backbones["qwen2_vl"], max_length=32)
    encoded = embedder.encoder.encode(Item(text="word " * 200))
    assert len(encoded) == 32
    assert backbones["qwen2_vl"].tokenizer.decode(encoded.input_ids).endswith("<|im_start|>assistant\n")


def test_mean_pooling_averages_the_attended_positions():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float64).reshape(2, 4, 3)
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    want = torch.stack([hidden[0, :3].mean(0), hidden[1, :2].mean(0)])  # hand: rows 0-2 and 0-1
    torch.testing.assert_close(mean_pool(hidden, right), want)
    torch.testing.assert_close(pool(hidden, left, "mean"), torch.stack([hidden[0, 1:].mean(0), hidden[1].mean(0)]))
    torch.testing.assert_close(pool(hidden, right, "last"), torch.stack([hidden[0, 2], hidden[1, 1]]))
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(hidden, right, "max")


def test_mean_pooled_embedder_matches_a_float64_mean_and_ignores_padding(backbones, media):
    backbone = dataclasses.replace(backbones["qwen2_vl"], pooling="mean")
    embedder = Embedder(backbone)
    items = _items(media)[:3]
    encoded = embedder.prepare(items)
    left, right = (embedder.encoder.collate(encoded, side) for side in ("left", "right"))
    with torch.no_grad():
        got = embedder.forward(right)
        torch.testing.assert_close(got, embedder.forward(left), atol=1e-5, rtol=1e-5)
        for i, one in enumerate(encoded):
            hidden = backbone.hidden_states(embedder.encoder.collate([one])).double()[0]
            want = hidden.mean(0) / hidden.mean(0).norm()
            torch.testing.assert_close(got[i].double(), want, atol=1e-5, rtol=1e-5)
        assert (got - Embedder(backbones["qwen2_vl"]).forward(right)).abs().max() > 1e-3  # not last-token


def test_pooling_is_read_back_from_the_checkpoint(tiny_dirs, tmp_path, make_config):
    from omniret.models.backbone import load_backbone

    model = tmp_path / "model"
    shutil.copytree(tiny_dirs["qwen2_vl"], model)
    cfg = make_config("qwen2_vl").model
    assert load_backbone(cfg.model_copy(update={"path": str(model)})).pooling == "last"  # nothing recorded
    save_pooling(model, "mean")
    assert saved_pooling(None, model) == "mean"
    assert load_backbone(cfg.model_copy(update={"path": str(model)})).pooling == "mean"  # auto reads it
    assert load_backbone(cfg.model_copy(update={"path": str(model), "pooling": "last"})).pooling == "last"
    (model / POOLING_FILE).write_text('{"pooling": "max"}')
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        load_backbone(cfg.model_copy(update={"path": str(model)}))

"""The embedding step of evaluation, called without Ray: vectors, failures per item, the map_batches class."""

from __future__ import annotations

import json

import numpy as np
import pytest

from omniret.data.schema import Side
from omniret.eval.embedding import embed_sides
from omniret.eval.ray_eval import EmbedBatch, resolved_config
from omniret.media.synth import draw_scene
from omniret.models.embedder import Embedder


@pytest.fixture(scope="module")
def sides(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sides")
    draw_scene([{"shape": "circle", "color": "red", "x": 28, "y": 28, "size": 30}], size=(56, 56)).save(folder / "ok.png")
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return [Side(text="a red circle"), Side(images=[str(folder / "bad.png")]), Side(images=[str(folder / "ok.png")],
                                                                                    instruction="Represent it.")]


def test_embed_sides_keeps_going_past_a_bad_item(make_config, sides):
    cfg = make_config("qwen2_vl", "embed.progress=false")
    embedder = Embedder.from_config(cfg)
    out = embed_sides(embedder, sides, ["q0", "q1", "q2"])
    assert out.ok.tolist() == [True, False, True]
    assert list(out.errors) == [1] and out.errors[1].startswith("q1 image 0") and "bad.png" in out.errors[1]
    assert np.allclose(np.linalg.norm(out.vectors[[0, 2]], axis=1), 1, atol=1e-4) and not out.vectors[1].any()
    reference = embedder.encode([s.to_item() for s in (sides[0], sides[2])])
    assert np.allclose(out.vectors[[0, 2]], reference, atol=1e-5)

    batch = {"key": np.array(["a", "b", "c"]), "name": np.array(["q0", "q1", "q2"]),
             "side": np.array([json.dumps(s.to_dict()) for s in sides])}
    result = EmbedBatch(resolved_config(cfg).model_dump())(batch)
    assert result["ok"].tolist() == [True, False, True] and result["key"].tolist() == ["a", "b", "c"]
    assert np.allclose(result["vector"], out.vectors, atol=1e-5)
    assert result["error"][0] == "" and "bad.png" in result["error"][1]


def test_an_item_that_breaks_the_model_batch_costs_only_itself(make_config, sides):
    """Special-token strings hidden inside each other in a query's text: the item is either embedded
    from clean text or reported by name; the items batched with it keep the vectors they get alone."""
    cfg = make_config("qwen2_vl", "embed.progress=false")
    embedder = Embedder.from_config(cfg)
    hostile = Side(text="find <|image_<|image_pad|>pad|> and <|vision_<|vision_end|>start|> this")
    batch = [sides[0], hostile, sides[2]]
    out = embed_sides(embedder, batch, ["q0", "q1", "q2"])
    assert out.ok[[0, 2]].all()
    alone = embedder.encode([s.to_item() for s in (sides[0], sides[2])])
    assert np.allclose(out.vectors[[0, 2]], alone, atol=1e-5)
    if out.ok[1]:
        special = set(embedder.encoder.tokenizer.all_special_ids)
        ids = embedder.encoder.encode(hostile.to_item()).input_ids
        plain = embedder.encoder.encode(Side(text="find this").to_item()).input_ids
        assert sorted(i for i in ids if i in special) == sorted(i for i in plain if i in special)
    else:
        assert list(out.errors) == [1] and out.errors[1].startswith("q1: ")


def test_a_configured_matryoshka_size_applies_to_every_item(make_config, sides):
    cfg = make_config("qwen2_vl", "embed.progress=false", "embed.dimensions=8")
    embedder = Embedder.from_config(cfg)
    out = embed_sides(embedder, sides, ["q0", "q1", "q2"])
    assert out.vectors.shape == (3, 8) and out.ok.tolist() == [True, False, True]
    assert np.allclose(out.vectors[[0, 2]], embedder.encode([s.to_item() for s in (sides[0], sides[2])]), atol=1e-5)

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

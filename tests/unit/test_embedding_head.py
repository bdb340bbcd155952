"""TTE_u embedding head: equal to the full model before training, only the head trains, saved and reloaded."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image

from omniret.items import Item
from omniret.models.embedder import Embedder
from omniret.models.head import HEAD_CONFIG, HEAD_WEIGHTS, EmbeddingHead, load_head

FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]


def _items():
    return ["short", Item(text="a much longer text about three red circles", instruction="Find it"),
            Item(text="mixed", images=[Image.new("RGB", (80, 50), "red")])]


@pytest.mark.parametrize("family", FAMILIES)
def test_untrained_head_embeds_bit_for_bit_as_the_full_model(family, backbones):
    backbone = backbones[family]
    plain = Embedder(backbone)
    headed = Embedder(dataclasses.replace(backbone, head=EmbeddingHead.from_backbone(backbone.model, 1)))
    encoded = plain.prepare(_items())
    for side in ("left", "right"):
        batch = plain.encoder.collate(encoded, side)
        with torch.no_grad():
            want, got = plain.forward(batch), headed.forward(batch)
        assert torch.equal(got, want), side
    # The head is a copy, not the backbone's own layers: changing it changes the embedding.
    with torch.no_grad():
        headed.network.head.norm.weight.mul_(2.0).add_(torch.linspace(0, 1, plain.dim))
        changed = headed.forward(plain.encoder.collate(encoded))
    assert not torch.allclose(changed, plain.forward(plain.encoder.collate(encoded)))


def test_head_size_is_checked(backbones):
    model = backbones["qwen2_vl"].model
    with pytest.raises(ValueError, match=r"1\.\.2 layers"):
        EmbeddingHead.from_backbone(model, 3)
    with pytest.raises(ValueError, match="deepstack"):
        EmbeddingHead.from_backbone(backbones["qwen3_vl"].model, 2)


def test_saved_head_loads_with_identical_weights(backbones, tmp_path):
    model = backbones["qwen2_vl"].model
    head = EmbeddingHead.from_backbone(model, 2)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.01)
    head.save(tmp_path)
    assert (tmp_path / HEAD_WEIGHTS).is_file() and (tmp_path / HEAD_CONFIG).is_file()
    loaded = load_head(tmp_path, model)
    assert loaded.first == 0 and len(loaded.layers) == 2
    for (name, a), (_, b) in zip(head.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert not any(p.requires_grad for p in loaded.parameters())

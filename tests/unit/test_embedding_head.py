"""TTE_u embedding head: equal to the full model before training, only the head trains, saved and reloaded."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from omniret.config import SyntheticConfig, load_config
from omniret.data.synthetic import generate_benchmark
from omniret.items import Item
from omniret.models.embedder import Embedder
from omniret.models.head import HEAD_CONFIG, HEAD_WEIGHTS, EmbeddingHead, load_head
from omniret.training import checkpoint as ckpt
from omniret.training.context import LocalContext, latest_checkpoint
from omniret.training.loop import TrainWorker

FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]


def _items():
    return ["short", Item(text="a much longer text about three red circles", instruction="Find it"),
            Item(text="mixed", images=[Image.new("RGB", (80, 50), "red")])]


@pytest.mark.parametrize(("family", "layers"), [("qwen2_vl", 1), ("qwen2_vl", 2), ("qwen2_5_vl", 1),
                                               ("qwen3_vl", 1)])
def test_untrained_head_embeds_bit_for_bit_as_the_full_model(family, layers, backbones):
    """n = 2 is the whole tiny model (fed the input embeddings); Qwen3-VL's head starts after its deepstack layer."""
    backbone = backbones[family]
    plain = Embedder(backbone)
    headed = Embedder(dataclasses.replace(backbone, head=EmbeddingHead.from_backbone(backbone.model, layers)))
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


# ---- training with train.mode=head ---------------------------------------------------------------

@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    generate_benchmark(root, SyntheticConfig(train_per_task=8, eval_queries=2, tasks=["syn_cls_color", "syn_t2i"]))
    return root


def _worker(tiny_dirs, bench, run_root, name, *overrides):
    cfg = load_config(None, [
        f"model.path={tiny_dirs['qwen2_vl']}", f"data.train=[{bench / 'train'}]", f"eval.root={bench / 'eval'}",
        f"train.output_dir={run_root}", f"train.name={name}", "media.max_pixels=50176", "train.batch_size=4",
        "train.query_chunk_size=2", "train.target_chunk_size=2", "train.lr=1e-2", "train.checkpoint_every=0",
        "train.eval_at_end=false", "train.torch_threads=1", "train.mode=head", "model.head_layers=1", *overrides])
    run_dir = f"{run_root}/{name}"
    return TrainWorker(cfg, LocalContext(run_dir, cfg.train.num_to_keep), run_dir)


def test_head_training_updates_only_the_head_and_round_trips_through_a_checkpoint(tiny_dirs, bench, tmp_path):
    worker = _worker(tiny_dirs, bench, tmp_path, "head")
    worker.setup()
    head = worker.backbone.head
    assert isinstance(head, EmbeddingHead) and len(head.layers) == 1 and head.first == 1
    in_optimizer = {id(p) for g in worker.optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in head.parameters()}
    assert not any(p.requires_grad for p in worker.model.parameters())
    backbone_before = {k: v.clone() for k, v in worker.model.state_dict().items()}
    head_before = {k: v.clone() for k, v in head.state_dict().items()}

    # One step, gradients kept (zero_grad would drop them) to see where they went.
    zero_grad, worker.optimizer.zero_grad = worker.optimizer.zero_grad, lambda **_: None
    row = worker.train_step()
    worker.optimizer.zero_grad = zero_grad
    assert row is not None and row["loss"] > 0
    assert all(p.grad is None for p in worker.model.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert all(torch.equal(v, backbone_before[k]) for k, v in worker.model.state_dict().items())
    assert any(not torch.equal(v, head_before[k]) for k, v in head.state_dict().items())

    worker.save_checkpoint(row)
    folder = latest_checkpoint(worker.run_dir)
    assert (folder / HEAD_WEIGHTS).is_file() and not (folder / "model.safetensors").exists()
    items = _items()
    with worker.evaluating():
        live = worker.embedder().encode(items, progress=False)
    overrides = [*ckpt.load_overrides(folder), "media.max_pixels=50176"]
    assert f"model.head={folder.resolve()}" in overrides
    loaded = Embedder.from_config(load_config(None, overrides))
    assert loaded.backbone.head is not None and loaded.model_id.endswith("+" + folder.name)
    assert np.array_equal(loaded.encode(items, progress=False), live)
    # The base alone (no head) is unaffected and differs from the trained head's embeddings.
    base = Embedder.from_config(load_config(None, [f"model.path={tiny_dirs['qwen2_vl']}", "media.max_pixels=50176"]))
    assert base.backbone.head is None
    assert np.abs(base.encode(items, progress=False) - live).max() > 1e-3

    # The exported stage output is the base with the head beside it: it loads from model.path alone.
    final = ckpt.export_final(folder, tmp_path / "final")
    exported = Embedder.from_config(load_config(None, [f"model.path={final}", "media.max_pixels=50176"]))
    assert exported.backbone.head is not None
    assert np.array_equal(exported.encode(items, progress=False), live)
    with pytest.raises(ValueError, match="has an embedding head"):  # a backbone is not trained under a head
        _worker(tiny_dirs, bench, tmp_path, "full-on-head", f"model.path={final}", "train.mode=full").setup()

    # Resuming continues the saved head, not a fresh copy of the backbone.
    again = _worker(tiny_dirs, bench, tmp_path, "head")
    again.setup()
    assert again.step == 1
    assert all(torch.equal(v, head.state_dict()[k]) for k, v in again.backbone.head.state_dict().items())


def test_head_mode_refuses_an_adapter(tiny_dirs, bench, tmp_path):
    worker = _worker(tiny_dirs, bench, tmp_path, "bad", f"model.adapter={tmp_path}")
    with pytest.raises(ValueError, match="export the adapter"):
        worker.setup()

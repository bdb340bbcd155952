"""GradCache gives the full-batch loss and gradients: tiny Qwen2-VL + LoRA, hard negatives, dropout,
chunk sizes that do and do not divide the batch, learnable temperatures, and 2 processes on gloo."""

from __future__ import annotations

import contextlib
import dataclasses
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from netutil import free_port
from PIL import Image

from omniret.config import LoraConfig
from omniret.items import Item
from omniret.losses import build_loss
from omniret.models import adapters
from omniret.models.embedder import Embedder, EmbeddingModel
from omniret.models.families import FAMILIES
from omniret.training.gradcache import GradCache, RngState

B, K = 6, 2
COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]


def _inputs():
    queries = [Item(text=f"a {c} shape number {i}", images=[Image.new("RGB", (56, 56), c)] if i % 2 else [])
               for i, c in enumerate(COLORS)]
    targets = [Item(images=[Image.new("RGB", (56 + 28 * (i % 2), 56), c)], text=c) for i, c in enumerate(COLORS)]
    negatives = [Item(text=f"not {c} but {COLORS[(i + k + 1) % B]}") for i, c in enumerate(COLORS) for k in range(K)]
    return queries, targets, negatives


def _model(path, dropout: float, seed: int = 0):
    base = FAMILIES["qwen2_vl"].model_class().from_pretrained(path, dtype=torch.float32)
    peft_model = adapters.attach_lora(base, LoraConfig(r=4, alpha=8, dropout=dropout))
    gen = torch.Generator().manual_seed(seed)
    # LoRA B starts at zero, and A from the global RNG: set both from a seeded generator so the adapter
    # is non-trivial (every gradient informative) and identical in every process.
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    peft_model.train()
    return peft_model


def _collate_fn(backbone, peft_model):
    view = dataclasses.replace(backbone, model=peft_model)
    encoder = Embedder(view).encoder
    return lambda items: encoder.collate([encoder.encode(item) for item in items])


def _grads(module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def _assert_same_grads(got: dict, want: dict, rtol: float = 1e-5, scalar_rtol: float | None = None):
    """Relative error (in norm) of every gradient below rtol; ``scalar_rtol`` for loss-owned scalars."""
    assert got.keys() == want.keys() and want
    nonzero = 0
    for name, g in want.items():
        err = (got[name] - g).norm() / g.norm().clamp_min(1e-12)
        limit = scalar_rtol if scalar_rtol is not None and name.startswith("loss.") else rtol
        assert err < limit or (got[name] - g).abs().max() < 1e-9, (name, float(err))
        nonzero += bool(g.abs().max() > 0)
    assert nonzero > len(want) // 2  # the comparison is not between zeros


def _full_batch(net, loss, collate, queries, targets, negatives, chunk: int | None = None):
    """Reference: plain autograd through the whole batch (optionally forwarding it in chunks)."""
    def embed(items):
        size = chunk or len(items)
        return torch.cat([net(collate(items[i:i + size])) for i in range(0, len(items), size)])
    q, t, n = embed(queries), embed(targets), embed(negatives)
    out = loss(q, t, n.view(len(queries), K, -1))
    out.loss.backward()
    return out.loss.detach()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("loss_name", ["infonce", "rzen"])
@pytest.mark.parametrize("chunk", [2, 4])  # 2 divides the batch of 6, 4 does not
def test_matches_full_batch_without_dropout(loss_name, chunk, dtype, tiny_dirs, backbones):
    peft_model = _model(tiny_dirs["qwen2_vl"], dropout=0.0).to(dtype)
    net, collate = EmbeddingModel(peft_model), _collate_fn(backbones["qwen2_vl"], peft_model)
    kwargs = {"task_temperature": True} if loss_name == "rzen" else {"learn_temperature": True}
    loss = build_loss(loss_name, **kwargs)
    queries, targets, negatives = _inputs()
    task = {"task_ids": 2} if loss_name == "rzen" else {}

    want_loss = _full_batch(net, lambda *a: loss(*a, **task), collate, queries, targets, negatives)
    want = {**_grads(net), **{f"loss.{k}": v for k, v in _grads(loss).items()}}
    net.zero_grad()
    loss.zero_grad()
    out = GradCache(net, loss, collate, chunk, chunk).step(queries, targets, negatives, **task)
    got = {**_grads(net), **{f"loss.{k}": v for k, v in _grads(loss).items()}}
    torch.testing.assert_close(out.loss, want_loss, rtol=1e-5, atol=1e-6)
    assert any(k.startswith("loss.") for k in want)  # the temperature got its gradient directly
    if dtype == torch.float64:  # the algorithm is exact: only rounding separates the two paths
        _assert_same_grads(got, want, rtol=1e-9)
    else:
        # Chunks pad to other lengths than the full batch, which moves fp32 embeddings by ~1e-7. Model
        # gradients stay within 1e-5; the temperature's is one scalar summing B*(B+K) logit terms at
        # scale 1/tau = 50 that largely cancel, so its fp32 rounding is larger (seen: up to 9e-4).
        _assert_same_grads(got, want, rtol=1e-5, scalar_rtol=3e-3)


def test_dropout_is_replayed_exactly(tiny_dirs, backbones):
    peft_model = _model(tiny_dirs["qwen2_vl"], dropout=0.3)
    net, collate = EmbeddingModel(peft_model), _collate_fn(backbones["qwen2_vl"], peft_model)
    loss = build_loss("infonce")
    queries, targets, negatives = _inputs()

    torch.manual_seed(123)
    want_loss = _full_batch(net, loss, collate, queries, targets, negatives, chunk=4)
    want = _grads(net)
    net.zero_grad()
    torch.manual_seed(123)
    out = GradCache(net, loss, collate, 4, 4).step(queries, targets, negatives)
    torch.testing.assert_close(out.loss, want_loss, rtol=1e-5, atol=1e-6)
    _assert_same_grads(_grads(net), want)

    # Without the replay the second forward draws other dropout masks: the test can tell.
    net.zero_grad()
    torch.manual_seed(123)
    original = RngState.replay
    RngState.replay = lambda self: contextlib.nullcontext()
    try:
        GradCache(net, loss, collate, 4, 4).step(queries, targets, negatives)
    finally:
        RngState.replay = original
    drift = max(float((g - want[n]).norm() / want[n].norm().clamp_min(1e-12)) for n, g in _grads(net).items())
    assert drift > 1e-3



def _worker(rank: int, world: int, port: int, path: str, out_dir: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from omniret.config import ModelConfig
        from omniret.models.backbone import load_backbone

        backbone = load_backbone(ModelConfig(path=path))
        peft_model = _model(path, dropout=0.0)
        net = torch.nn.parallel.DistributedDataParallel(EmbeddingModel(peft_model))
        collate = _collate_fn(backbone, peft_model)
        queries, targets, negatives = _inputs()
        half = slice(rank * B // world, (rank + 1) * B // world)
        negs = negatives[half.start * K:half.stop * K]
        out = GradCache(net, build_loss("infonce"), collate, 2, 2).step(queries[half], targets[half], negs)
        torch.save({"loss": out.loss, "grads": _grads(net.module)}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_with_cross_worker_negatives(tiny_dirs, backbones, tmp_path):
    path = str(tiny_dirs["qwen2_vl"])
    mp.spawn(_worker, args=(2, free_port(), path, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    peft_model = _model(path, dropout=0.0)
    net, collate = EmbeddingModel(peft_model), _collate_fn(backbones["qwen2_vl"], peft_model)
    want_loss = _full_batch(net, build_loss("infonce"), collate, *_inputs())
    want = _grads(net)
    # Each rank's loss is W * (its rows' share); their mean is the full-batch loss (losses/base.py).
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / 2, want_loss, rtol=1e-5, atol=1e-6)
    for r in ranks:  # DDP averaged the gradients: every rank holds the full-batch gradient
        _assert_same_grads(r["grads"], want)

"""ReMatch (METHODS §6): L_orth against a float64 reference, packed views equal sequential ones, a few steps
lower the loss, the tokens survive a save/load round trip, and the embedder embeds as E*."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest
import torch
from PIL import Image

from omniret.config import load_config
from omniret.items import Item
from omniret.losses.registry import build_loss
from omniret.losses.rematch import ReMatchLoss, orthogonality_loss
from omniret.models.backbone import core_model, load_backbone, model_tag
from omniret.models.embedder import Embedder
from omniret.models.matching import MatchingViews
from omniret.models.rematch import REMATCH_CONFIG, REMATCH_WEIGHTS, ReMatchTokens, load_rematch, saved_rematch
from omniret.models.reranker import Reranker
from omniret.training.context import LocalContext
from omniret.training.loop import TrainWorker


def _orth_reference(states: np.ndarray) -> float:
    """(2 / (K (K-1))) sum_{i<j} (ẽ_iᵀ ẽ_j)², averaged over items, in float64 loops."""
    total = 0.0
    for item in states:
        k = len(item)
        unit = [e / np.sqrt(e @ e) for e in item]
        total += 2.0 / (k * (k - 1)) * sum((unit[i] @ unit[j]) ** 2 for i, j in itertools.combinations(range(k), 2))
    return total / len(states)


def test_orthogonality_loss_on_hand_vectors():
    # Item 1: e1 ⟂ e2, e3 at 45° to both: cosines 0, 1/√2, 1/√2 -> (2/6)(0 + 1/2 + 1/2) = 1/3.
    # Item 2: three copies of one direction (different lengths): every cosine 1 -> 1.
    states = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]],
                           [[1.0, 1.0], [2.0, 2.0], [0.5, 0.5]]], dtype=torch.float64)
    assert orthogonality_loss(states).item() == pytest.approx((1 / 3 + 1) / 2, abs=1e-12)
    # K = 1: no pair, no loss (and still a graph).
    assert orthogonality_loss(torch.ones(2, 1, 3, requires_grad=True)).item() == 0.0


def test_orthogonality_loss_value_and_gradient_match_float64():
    gen = torch.Generator().manual_seed(0)
    states = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    got = orthogonality_loss(states)
    assert got.item() == pytest.approx(_orth_reference(states.detach().numpy()), rel=1e-6)
    got.backward()
    # Central differences of the float64 reference.
    base, eps = states.detach().numpy(), 1e-6
    numeric = np.zeros_like(base)
    for idx in np.ndindex(base.shape):
        plus, minus = base.copy(), base.copy()
        plus[idx] += eps
        minus[idx] -= eps
        numeric[idx] = (_orth_reference(plus) - _orth_reference(minus)) / (2 * eps)
    np.testing.assert_allclose(states.grad.numpy(), numeric, rtol=1e-4, atol=1e-7)


def test_rematch_loss_adds_weighted_terms():
    gen = torch.Generator().manual_seed(1)
    q, t = torch.randn(4, 3, 8, generator=gen), torch.randn(4, 3, 8, generator=gen)
    logits, labels = torch.tensor([2.0, -1.0, 0.5, 0.0]), torch.tensor([1.0, 0.0, 1.0, 0.0])
    inner = build_loss("infonce", temperature=0.05)
    out = ReMatchLoss(inner, orth_weight=0.5, qdm_weight=0.1)(q, t, None, logits, labels)
    fused = [torch.nn.functional.normalize(x.mean(1), dim=-1) for x in (q, t)]
    cl = inner(fused[0], fused[1]).loss
    orth = orthogonality_loss(torch.cat([q, t]))
    qdm = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    assert out.loss.item() == pytest.approx((cl + 0.5 * orth + 0.1 * qdm).item(), rel=1e-6)
    assert out.metrics["l_qdm"] == pytest.approx(qdm.item(), rel=1e-6)


# ---- the model side -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def backbone(backbones):
    return dataclasses.replace(backbones["qwen2_vl"],
                               rematch=ReMatchTokens.create(backbones["qwen2_vl"].model, 3, mlp_hidden=16, seed=0))


def _items():
    return ["short", Item(text="a much longer text about three red circles", instruction="Find it"),
            Item(text="mixed", images=[Image.new("RGB", (80, 50), "red")])]


def test_embedder_embeds_as_the_mean_of_the_token_states(backbone):
    """Reference: the K token rows appended to the input embeddings by hand, the core model run on
    inputs_embeds (text items, left padding), then E* = mean of the last K states, normalised."""
    embedder = Embedder(backbone)
    items = _items()[:2]
    batch = embedder.encoder.collate(embedder.prepare(items), "left")
    core, k = core_model(backbone.model), backbone.rematch.k
    with torch.no_grad():
        embeds = core.get_input_embeddings()(batch["input_ids"])
        rows = embeds.shape[0]
        embeds = torch.cat([embeds, backbone.rematch.tokens[None].expand(rows, -1, -1)], dim=1)
        mask = torch.cat([batch["attention_mask"], torch.ones(rows, k, dtype=torch.long)], dim=1)
        positions = (mask.cumsum(1) - 1).clamp(min=0)[None].expand(3, -1, -1)
        hidden = core(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
        want = torch.nn.functional.normalize(hidden[:, -k:].mean(1), dim=-1).numpy()
    got = embedder.encode(items)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # Without the tokens the same items embed differently (last-token pooling).
    plain = Embedder(dataclasses.replace(backbone, rematch=None)).encode(items)
    assert np.abs(plain - got).max() > 1e-2


def test_embed_multi_returns_k_unit_states_per_item_whatever_the_padding(backbone):
    embedder = Embedder(backbone)
    multi = embedder.embed_multi(_items())
    assert multi.shape == (3, 3, embedder.dim) and embedder.multi_vectors == 3
    np.testing.assert_allclose(np.linalg.norm(multi, axis=-1), 1.0, atol=1e-5)
    encoded = embedder.prepare(_items())
    with torch.no_grad():
        left = embedder.network.token_states(embedder.encoder.collate(encoded, "left"))
        right = embedder.network.token_states(embedder.encoder.collate(encoded, "right"))
    torch.testing.assert_close(left, right, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(multi, torch.nn.functional.normalize(left, dim=-1).numpy(), atol=1e-5)
    assert embedder.embed_multi(_items(), dimensions=8).shape == (3, 3, 8)
    with pytest.raises(ValueError, match="no ReMatch tokens"):
        Embedder(dataclasses.replace(backbone, rematch=None)).embed_multi(["x"])


def test_rematch_multivector_source_gives_e_star_then_the_token_states(backbone):
    embedder = Embedder(backbone)
    rows = embedder.encode(_items(), multivector=(3, "rematch"))
    assert rows.shape == (3, 4, embedder.dim)
    np.testing.assert_allclose(rows[:, 0], embedder.encode(_items()), atol=1e-5)  # E*, the fused vector
    np.testing.assert_allclose(rows[:, 1:], embedder.embed_multi(_items()), atol=1e-5)
    with pytest.raises(ValueError, match="multivector_k is 4"):
        embedder.encode(_items(), multivector=(4, "rematch"))


def test_tokens_save_and_load_round_trip(backbone, tiny_dirs, tmp_path):
    tokens = backbone.rematch
    tokens.save(tmp_path)
    assert (tmp_path / REMATCH_WEIGHTS).is_file() and saved_rematch(None, tmp_path) == tmp_path
    loaded = load_rematch(tmp_path, backbone.model)
    for name, value in tokens.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    assert not any(p.requires_grad for p in loaded.parameters())
    # load_backbone finds them (model.rematch.path) and the embedder uses them.
    cfg = load_config(None, [f"model.path={tiny_dirs['qwen2_vl']}", f"model.rematch.path={tmp_path}"])
    reloaded = Embedder(load_backbone(cfg.model))
    np.testing.assert_allclose(reloaded.encode(_items()), Embedder(backbone).encode(_items()), atol=1e-6)
    assert model_tag(cfg.model) == f"qwen2_vl+{tmp_path.name}"  # the vectors' name says which tokens made them
    # Saved for another hidden size, or another K than asked for: refused by name.
    config = json.loads((tmp_path / REMATCH_CONFIG).read_text())
    with pytest.raises(ValueError, match="holds 3 ReMatch tokens"):
        load_backbone(load_config(None, [f"model.path={tiny_dirs['qwen2_vl']}", f"model.rematch.path={tmp_path}",
                                         "model.rematch.tokens=4"]).model)
    (tmp_path / REMATCH_CONFIG).write_text(json.dumps({**config, "hidden": 7}))
    with pytest.raises(ValueError, match="hidden size 7"):
        load_rematch(tmp_path, backbone.model)
    with pytest.raises(FileNotFoundError, match="holds no ReMatch tokens"):
        load_backbone(load_config(None, [f"model.path={tiny_dirs['qwen2_vl']}",
                                         f"model.rematch.path={tmp_path / 'none'}"]).model)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_packed_views_score_as_sequential_views(backbones, family):
    """Two samples' 8 views (raw and latent sides, one document with an image) in one packed row each
    against 16 rows: the same logits, and the same gradient into the latents and the model."""
    backbone = backbones[family]
    views = MatchingViews(Reranker(backbone))
    q = Item(text="find the red circle")
    docs = [Item(text="a red circle", images=[Image.new("RGB", (60, 60), "red")]), Item(text="a blue square")]
    assert views.encode(q, docs[0], None).encoded.input_ids == Reranker(backbone).encode_pair(q, docs[0], None).input_ids
    batch = [views.encode(qs, ds, None) for qs in (q, 0) for d, z in ((docs[0], 1), (docs[1], 2)) for ds in (d, z)]
    batch += batch[::-1]
    gen = torch.Generator().manual_seed(0)
    results = []
    for packed in (False, True):
        latents = (torch.randn(3, views.reranker.backbone.model.config.text_config.hidden_size, generator=gen) * 0.02
                   if not results else results[0][2].detach().clone()).requires_grad_(True)
        backbone.model.zero_grad(set_to_none=True)
        logits = views.logits(batch, latents, packed=packed, group=8)
        (logits * torch.arange(1.0, 17.0)).sum().backward()
        weight = core_model(backbone.model).language_model.layers[0].self_attn.q_proj.weight
        results.append((logits.detach(), weight.grad.clone(), latents, latents.grad.clone()))
    (seq, seq_w, _, seq_z), (pack, pack_w, _, pack_z) = results
    backbone.model.zero_grad(set_to_none=True)
    torch.testing.assert_close(pack, seq, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pack_z, seq_z, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(pack_w, seq_w, atol=1e-6, rtol=1e-4)
    assert seq_z.abs().sum() > 0  # the latents do reach the answer
    with pytest.raises(ValueError, match="groups of 8"):
        views.logits(batch[:7], latents, packed=True)


# ---- training ------------------------------------------------------------------------------------------


def _cfg(tiny_dirs, pairs, run_root, *overrides):
    return load_config(None, [
        f"model.path={tiny_dirs['qwen2_vl']}", f"data.train=[{pairs}]", f"train.output_dir={run_root}",
        "train.name=rm", "train.objective=rematch", "train.mode=full", "train.batch_size=4", "train.gradcache=false",
        "train.lr=1e-3", "train.checkpoint_every=0", "train.eval_at_end=false", "train.torch_threads=1",
        "train.negatives=1", "train.warmup_ratio=0", "model.rematch.tokens=3", *overrides])


def _worker(cfg, run_dir):
    worker = TrainWorker(cfg, LocalContext(run_dir), run_dir)
    worker.setup()
    return worker


def test_packed_and_sequential_steps_give_the_same_loss(tiny_dirs, text_pairs, tmp_path):
    losses = {}
    for packed in (True, False):
        cfg = _cfg(tiny_dirs, text_pairs, tmp_path, f"train.name=rm-{packed}", f"model.rematch.packed={packed}")
        worker = _worker(cfg, tmp_path / f"rm-{packed}")
        if worker.sampler.needs_epoch_start:
            worker.begin_epoch()
        pairs = worker.sampler.pairs_of(worker.sampler.next())
        inputs = worker.objective.inputs(pairs)
        assert len(inputs.views) == 8 * inputs.rows and sum(inputs.labels) == 4 * inputs.rows
        out = worker.objective.run(inputs, 0)
        grad = worker.backbone.rematch.tokens.grad.clone()
        losses[packed] = (out.loss.item(), out.metrics["l_qdm"], grad)
    assert losses[True][0] == pytest.approx(losses[False][0], abs=1e-5)
    assert losses[True][1] == pytest.approx(losses[False][1], abs=1e-5)
    torch.testing.assert_close(losses[True][2], losses[False][2], atol=1e-5, rtol=1e-3)


@pytest.mark.slow
def test_a_few_steps_lower_the_loss_and_the_tokens_travel_with_the_checkpoint(tiny_dirs, text_pairs, tmp_path):
    cfg = _cfg(tiny_dirs, text_pairs, tmp_path, "train.max_steps=8", "train.batch_size=8")
    run_dir = tmp_path / "rm"
    worker = _worker(cfg, run_dir)
    start = worker.backbone.rematch.tokens.detach().clone()
    rows = [worker.train_step() for _ in range(8)]
    assert all(r is not None and np.isfinite(r["loss"]) for r in rows)
    assert not np.isnan(rows[0]["l_qdm"]) and not np.isnan(rows[0]["l_orth"])
    assert np.mean([r["loss"] for r in rows[-3:]]) < np.mean([r["loss"] for r in rows[:3]]) - 0.05, rows
    assert not torch.equal(worker.backbone.rematch.tokens.detach(), start)  # the tokens train
    worker.save_checkpoint(rows[-1])
    from omniret.training.context import latest_checkpoint

    checkpoint = latest_checkpoint(run_dir)
    assert saved_rematch(checkpoint) == checkpoint
    loaded = load_backbone(load_config(None, [f"model.path={checkpoint}"]).model)
    torch.testing.assert_close(loaded.rematch.tokens, worker.backbone.rematch.tokens.detach())
    with worker.evaluating():
        want = worker.objective.embedder.encode(["find the red star", "a blue circle"])
    np.testing.assert_allclose(Embedder(loaded).encode(["find the red star", "a blue circle"]), want, atol=1e-5)


def test_configuration_errors_are_clear(tiny_dirs, text_pairs, tmp_path):
    from omniret.errors import ConfigError

    with pytest.raises(ConfigError, match="gradcache=false"):
        _worker(_cfg(tiny_dirs, text_pairs, tmp_path, "train.gradcache=true"), tmp_path / "a")
    with pytest.raises(ConfigError, match=r"model\.rematch\.tokens"):
        _worker(_cfg(tiny_dirs, text_pairs, tmp_path, "model.rematch.tokens=0", "train.name=b"), tmp_path / "b")


@pytest.mark.slow
def test_lora_training_keeps_the_tokens_beside_the_adapter_through_resume_and_export(tiny_dirs, text_pairs, tmp_path):
    from omniret.training import checkpoint as ckpt
    from omniret.training.context import latest_checkpoint

    cfg = _cfg(tiny_dirs, text_pairs, tmp_path, "train.mode=lora", "train.max_steps=4")
    run_dir = tmp_path / "rm"
    worker = _worker(cfg, run_dir)
    assert worker.train_step() is not None
    worker.save_checkpoint()
    trained = worker.backbone.rematch.tokens.detach().clone()
    checkpoint = latest_checkpoint(run_dir)
    assert (checkpoint / "adapter_config.json").is_file() and saved_rematch(checkpoint) == checkpoint
    resumed = _worker(cfg, run_dir)  # the same run folder: resumes from the checkpoint
    assert resumed.step == 1 and resumed.backbone.rematch.tokens.requires_grad
    torch.testing.assert_close(resumed.backbone.rematch.tokens.detach(), trained)
    final = ckpt.export_final(checkpoint, tmp_path / "final")  # LoRA merged; the tokens go with it
    loaded = load_backbone(load_config(None, [f"model.path={final}"]).model)
    torch.testing.assert_close(loaded.rematch.tokens, trained)

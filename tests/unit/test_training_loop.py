"""The training loop without Ray (LocalContext): exact resume, checkpoints that reload into the embedder,
metrics and outputs, broken inputs, gradient checkpointing, optimizer groups and schedule."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image

from omniret.config import SyntheticConfig, load_config
from omniret.data.synthetic import generate_benchmark
from omniret.items import Item
from omniret.losses import build_loss
from omniret.models.embedder import Embedder, EmbeddingModel
from omniret.training import checkpoint as ckpt
from omniret.training.context import LocalContext, latest_checkpoint
from omniret.training.loop import TrainWorker, enable_checkpointing, full_batch_step
from omniret.training.optim import build_optimizer, param_groups, warmup_cosine

TASKS = ["syn_cls_color", "syn_cls_shape", "syn_t2i", "syn_docs"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    generate_benchmark(root, SyntheticConfig(train_per_task=16, eval_queries=4, tasks=TASKS))
    return root


def _cfg(tiny_dirs, bench, run_root, name="run", *overrides):
    return load_config(None, [
        f"model.path={tiny_dirs['qwen2_vl']}", f"data.train=[{bench / 'train'}]", f"eval.root={bench / 'eval'}",
        f"train.output_dir={run_root}", f"train.name={name}", "media.max_pixels=50176", "train.batch_size=8",
        "train.query_chunk_size=4", "train.target_chunk_size=4", "train.lr=1e-3", "train.checkpoint_every=0",
        "train.eval_at_end=false", "train.torch_threads=1", "loss.temperature=0.05", *overrides])


def _worker(cfg):
    return TrainWorker(cfg, LocalContext(cfg.train.output_dir + "/" + cfg.train.name, cfg.train.num_to_keep),
                       cfg.train.output_dir + "/" + cfg.train.name)


def _steps(worker, n):
    return [worker.train_step() for _ in range(n)]


def test_resume_continues_with_the_same_steps_losses_and_batches(tiny_dirs, bench, tmp_path):
    """LoRA (dropout: the RNG state matters) + learnable temperature; a worker restarted from the
    checkpoint reproduces the uninterrupted run's batches and losses, and its step count."""
    extra = ["train.mode=lora", "lora.r=4", "lora.dropout=0.1", "train.max_steps=6", "train.negatives=1",
             "loss.name=rzen", "loss.options={task_temperature: true, fn_threshold: null}"]
    reference = _worker(_cfg(tiny_dirs, bench, tmp_path, "reference", *extra))
    reference.setup()
    want = _steps(reference, 6)

    first = _worker(_cfg(tiny_dirs, bench, tmp_path, "resumed", *extra))
    first.setup()
    got = _steps(first, 3)
    first.save_checkpoint(got[-1])
    del first  # "the worker died"
    second = _worker(_cfg(tiny_dirs, bench, tmp_path, "resumed", *extra))
    second.setup()
    assert second.step == 3 and second.resumed_from is not None
    got += _steps(second, 3)
    assert second.step == 6 and second.scheduler.last_epoch == 6
    assert [r["batch"] for r in got] == [r["batch"] for r in want]
    assert [r["group"] for r in got] == [r["group"] for r in want]
    np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in want], rtol=1e-5)
    assert got[-1]["tau_image_classification"] == pytest.approx(want[-1]["tau_image_classification"], rel=1e-5)
    assert any(r["tau_image_retrieval"] != 0.05 for r in want)  # the task temperature did move


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_checkpoint_reloads_into_the_embedder_with_the_same_embeddings(mode, tiny_dirs, bench, tmp_path):
    cfg = _cfg(tiny_dirs, bench, tmp_path, mode, f"train.mode={mode}", "lora.r=4", "train.max_steps=3")
    worker = _worker(cfg)
    worker.setup()
    _steps(worker, 3)
    worker.save_checkpoint()
    pairs = worker.sampler.pairs[:6]
    items = [s.to_item() for p in pairs for s in (p.query, p.positives[0])]
    with worker.evaluating():
        live = worker.embedder().encode(items, progress=False)

    folder = latest_checkpoint(worker.run_dir)
    assert folder.name == "checkpoint_000003"
    assert (folder / ("adapter_config.json" if mode == "lora" else "config.json")).is_file()
    loaded = Embedder.from_config(load_config(None, [*ckpt.load_overrides(folder), "media.max_pixels=50176"]))
    if mode == "lora":
        assert loaded.backbone.model.peft_config  # base + adapter, as model.path / model.adapter say
    np.testing.assert_allclose(loaded.encode(items, progress=False), live, atol=2e-5)
    base = Embedder.from_config(load_config(None, [f"model.path={tiny_dirs['qwen2_vl']}", "media.max_pixels=50176"]))
    assert np.abs(base.encode(items, progress=False) - live).max() > 1e-3  # training changed the model


def test_run_writes_metrics_checkpoints_final_model_eval_and_plot(tiny_dirs, bench, tmp_path):
    cfg = _cfg(tiny_dirs, bench, tmp_path, "full-run", "train.mode=full", "train.max_steps=6", "train.checkpoint_every=2",
               "train.num_to_keep=2", "train.eval_every=3", "train.eval_max_queries=2", "train.eval_at_end=true",
               "train.negatives=1")
    from omniret.training.trainer import fit

    result = fit(cfg, local=True)
    run = result.run_dir
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    for row in rows:
        assert float(row["loss"]) > 0 and float(row["pairs_per_s"]) > 0 and float(row["peak_mem_mb"]) > 0
        # 8 in-batch targets: 7 others (fewer when identical labels count as positives) + 1 hard negative
        assert 1 <= float(row["num_negatives"]) <= 8
        assert float(row["temperature"]) == pytest.approx(0.05)
    assert sorted(p.name for p in run.glob("checkpoint_*")) == ["checkpoint_000004", "checkpoint_000006"]
    state = ckpt.read_state(run / "checkpoint_000006")
    assert state["step"] == 6 and state["sampler"]["position"] == 6
    evals = list(csv.DictReader((run / "eval.csv").open()))
    assert [e["tag"] for e in evals] == ["step_000003", "final"]
    assert 0 <= float(evals[-1]["Overall"]) <= 100 and result.metrics["Overall"] == pytest.approx(
        float(evals[-1]["Overall"]), abs=1e-3)
    assert (run / "final" / "config.json").is_file() and (run / "eval" / "final" / "report.json").is_file()
    assert Image.open(run / "curves.png").size == (900, 600)
    again = fit(cfg, local=True)  # a finished stage is not trained twice
    assert again.skipped and again.final == run / "final"


def test_lora_stage_exports_a_merged_model_and_its_adapter(tiny_dirs, bench, tmp_path):
    cfg = _cfg(tiny_dirs, bench, tmp_path, "lora-run", "train.mode=lora", "lora.r=4", "lora.dropout=0.0",
               "train.max_steps=2")
    from omniret.training.trainer import fit

    result = fit(cfg, local=True)
    final = result.final
    assert (final / "config.json").is_file() and (final / "adapter" / "adapter_config.json").is_file()
    items = ["a red circle", "a blue square"]
    merged = Embedder.from_config(load_config(None, [f"model.path={final}"])).encode(items, progress=False)
    adapted = Embedder.from_config(load_config(None, ckpt.load_overrides(latest_checkpoint(result.run_dir))))
    np.testing.assert_allclose(merged, adapted.encode(items, progress=False), atol=2e-5)
    from omniret.models.reranker import Reranker

    for overrides in ([f"model.path={final}"], ckpt.load_overrides(latest_checkpoint(result.run_dir))):
        scores = Reranker.from_config(load_config(None, overrides)).score("a red circle", items)
        assert np.isfinite(np.asarray(scores)).all() and len(scores) == 2


def test_a_pair_with_unreadable_media_is_left_out_and_training_goes_on(tiny_dirs, bench, tmp_path):
    worker = _worker(_cfg(tiny_dirs, bench, tmp_path, "broken", "train.mode=full", "train.max_steps=3",
                          "data.merge_classification=false"))
    worker.setup()
    worker.sampler.begin_epoch()
    batch = worker.sampler.plan()[0]
    victim = worker.sampler.pairs_of(batch)[0]  # every benchmark pair has a picture or a PDF page
    broken = tmp_path / "broken.bin"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    for side in (victim.query, victim.positives[0]):
        if side.images:
            side.images = [str(broken)]
        if side.page is not None:
            side.page.path = str(broken)
    row = worker.train_step()
    assert row is not None and row["dropped"] == 1 and row["pairs"] == len(batch.indices) - 1
    assert math.isfinite(row["loss"])


def test_gradient_checkpointing_gives_the_same_gradients(tiny_dirs, backbones):
    from omniret.models.families import FAMILIES

    encoder = Embedder(backbones["qwen2_vl"]).encoder
    colours = ("red", "green", "blue")
    queries = [encoder.encode(Item(text=f"a {c} thing")) for c in colours]
    targets = [encoder.encode(Item(text=c, images=[Image.new("RGB", (56, 56), c)])) for c in colours]
    grads = []
    for checkpointing in (False, True):
        model = FAMILIES["qwen2_vl"].model_class().from_pretrained(tiny_dirs["qwen2_vl"], dtype=torch.float32)
        model.train()
        if checkpointing:
            enable_checkpointing(model)
            assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
        net = EmbeddingModel(model)
        out = full_batch_step(net, build_loss("infonce"), encoder.collate, queries, targets, None)
        grads.append((float(out.loss), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    assert grads[0][1].keys() == grads[1][1].keys() and grads[0][1]
    for name, g in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][name], g, rtol=1e-5, atol=1e-7)


def test_param_groups_keep_temperatures_out_of_weight_decay():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    loss = build_loss("rzen", task_temperature=True)
    groups = {g["name"]: g for g in param_groups(model, loss, lr=1e-3, weight_decay=0.05, temperature_lr=1e-2)}
    assert [p.shape for p in groups["decay"]["params"]] == [torch.Size([4, 4])]
    assert len(groups["no_decay"]["params"]) == 3 and groups["no_decay"]["weight_decay"] == 0.0
    assert groups["temperature"]["params"] == [loss.temperature.theta]
    assert groups["temperature"]["weight_decay"] == 0.0 and groups["temperature"]["lr"] == 1e-2


def test_warmup_then_cosine_schedule():
    param = torch.nn.Parameter(torch.zeros(2, 2))
    optimizer = build_optimizer(torch.nn.ParameterList([param]), torch.nn.Module(), lr=1.0, weight_decay=0.0)
    scheduler = warmup_cosine(optimizer, total_steps=12, warmup_steps=2, min_lr_ratio=0.1)
    lrs = []
    for _ in range(12):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert lrs[7] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 5 / 10)))
    assert scheduler.get_last_lr()[0] == pytest.approx(0.1)


@pytest.mark.parametrize("steps_per_epoch, epochs", [(2, [0, 0, 1]), (None, [0, 0, 0])])
def test_pyramid_curriculum_follows_training_progress(steps_per_epoch, epochs, tiny_dirs, bench, tmp_path):
    """Decisions at epoch starts and every interval (3 per run at least); sigma follows the step, so a
    single-epoch run (None: 8 steps per epoch, 3 taken) also moves from sigma_min to sigma_max."""
    from omniret.training.logbook import read_events
    from omniret.training.sampling import pyramid_probabilities

    extra = [f"train.steps_per_epoch={steps_per_epoch}"] if steps_per_epoch else []
    cfg = _cfg(tiny_dirs, bench, tmp_path, f"pyramid{steps_per_epoch}", "train.mode=full",
               "train.curriculum=pyramid", "train.max_steps=3", "train.probe_pairs=3", *extra)
    worker = _worker(cfg)
    worker.setup()
    rows = _steps(worker, 3)
    decisions = [e for e in read_events(worker.run_dir) if e["event"] == "curriculum"]
    assert [d["step"] for d in decisions] == [0, 1, 2] and [d["epoch"] for d in decisions] == epochs
    assert [d["sigma"] for d in decisions] == pytest.approx([0.1, 0.55, 1.0])
    base = worker.sampler.base_probabilities
    for d in decisions:
        assert set(d["alignment"]) == set(base) and all(-1 <= v <= 1 for v in d["alignment"].values())
        assert d["probabilities"] == pytest.approx(pyramid_probabilities(base, d["alignment"], d["sigma"]))
    assert [r["epoch"] for r in rows] == epochs
    assert worker.sampler.state.sigma == 1.0 and worker.sampler.state.alignment == decisions[2]["alignment"]


def test_a_step_whose_masks_leave_no_negative_is_counted_and_warned(tiny_dirs, bench, tmp_path, caplog):
    """fn_threshold -1: RzenEmbed's rule masks every negative; the loss is 0 and the step says so."""
    cfg = _cfg(tiny_dirs, bench, tmp_path, "no-negatives", "train.mode=full", "train.max_steps=1",
               "loss.name=rzen", "loss.options={fn_threshold: -1.0}")
    worker = _worker(cfg)
    worker.setup()
    with caplog.at_level("WARNING", logger="omniret.training.loop"):
        (row,) = _steps(worker, 1)
    assert row["rows_without_negatives"] == 8 and row["loss"] == 0.0 and row["grad_norm"] == 0.0
    assert "masking left 8 of 8 rows of rank 0 without a negative" in caplog.text


def test_mean_pooling_is_trained_and_recorded_in_checkpoint_and_final(tiny_dirs, bench, tmp_path):
    from omniret.models.backbone import load_backbone
    from omniret.training.trainer import fit

    cfg = _cfg(tiny_dirs, bench, tmp_path, "mean", "train.mode=lora", "lora.r=4", "lora.dropout=0.0",
               "train.max_steps=1", "model.pooling=mean")
    result = fit(cfg, local=True)
    checkpoint = latest_checkpoint(result.run_dir)
    base = cfg.model.model_copy(update={"pooling": "auto"})
    assert load_backbone(base.model_copy(update={"adapter": str(checkpoint)})).pooling == "mean"
    assert load_backbone(base.model_copy(update={"path": str(result.final)})).pooling == "mean"
    assert load_backbone(base).pooling == "last"  # the untouched base keeps last-token pooling


def test_stage_adapters_soup_into_one_checkpoint(tiny_dirs, bench, tmp_path):
    from omniret.models.adapters import soup
    from omniret.training.trainer import fit

    finals = []
    for seed in (1, 2):
        cfg = _cfg(tiny_dirs, bench, tmp_path, f"mix{seed}", "train.mode=lora", "lora.r=4", "lora.dropout=0.0",
                   "train.max_steps=2", f"train.seed={seed}")
        finals.append(fit(cfg, local=True).final)
    out = soup(tiny_dirs["qwen2_vl"], [f / "adapter" for f in finals], [0.5, 0.5], tmp_path / "souped")
    items = ["a red circle", "three blue squares"]
    vectors = {name: Embedder.from_config(load_config(None, [f"model.path={path}"])).encode(items, progress=False)
               for name, path in (("souped", out), ("a", finals[0]), ("b", finals[1]))}
    assert np.abs(vectors["souped"] - vectors["a"]).max() > 1e-6 and np.abs(vectors["souped"] - vectors["b"]).max() > 1e-6
    only_a = soup(tiny_dirs["qwen2_vl"], [f / "adapter" for f in finals], [1.0, 0.0], tmp_path / "only-a")
    np.testing.assert_allclose(Embedder.from_config(load_config(None, [f"model.path={only_a}"])).encode(
        items, progress=False), vectors["a"], atol=2e-5)  # weight 1 on one stage's adapter is that stage's model

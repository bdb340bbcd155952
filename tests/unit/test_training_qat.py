"""Quantisation-aware training through the training loop: loss.options.quantize trains LSQ steps, and a
restarted worker resumes them from the checkpoint."""

from __future__ import annotations

import math

import pytest

from omniret.config import SyntheticConfig, load_config
from omniret.data.synthetic import generate_benchmark
from omniret.losses import QuantizedLoss
from omniret.training.context import LocalContext
from omniret.training.loop import TrainWorker


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("qat")
    generate_benchmark(root, SyntheticConfig(train_per_task=8, eval_queries=2, tasks=["syn_t2i"]))
    return root


def _worker(tiny_dirs, bench, run_root):
    cfg = load_config(None, [
        f"model.path={tiny_dirs['qwen2_vl']}", f"data.train=[{bench / 'train'}]", f"eval.root={bench / 'eval'}",
        f"train.output_dir={run_root}", "train.name=qat", "media.max_pixels=50176", "train.batch_size=4",
        "train.mode=full", "train.max_steps=2", "train.lr=1e-3", "train.checkpoint_every=0",
        "train.eval_at_end=false", "train.torch_threads=1", "loss.options={quantize: [int8, binary]}"])
    worker = TrainWorker(cfg, LocalContext(f"{run_root}/qat", 1), f"{run_root}/qat")
    worker.setup()
    return worker


def test_quantize_option_trains_the_steps_and_resumes_them(tiny_dirs, bench, tmp_path):
    worker = _worker(tiny_dirs, bench, tmp_path)
    assert isinstance(worker.loss, QuantizedLoss)
    rows = [worker.train_step() for _ in range(2)]
    assert all(math.isfinite(r["loss"]) for r in rows)
    int8 = worker.loss.quantizers["int8"]
    assert bool(int8.initialized) and int8.step.grad is None  # zeroed after the optimiser step
    groups = {g["name"]: g for g in worker.optimizer.param_groups}
    assert int8.step in groups["loss"]["params"]
    state = worker.optimizer.state[int8.step]
    assert state and float(state["exp_avg"].abs()) > 0  # the step received gradients and was updated
    worker.save_checkpoint(rows[-1])
    value = float(int8.step.detach())
    resumed = _worker(tiny_dirs, bench, tmp_path)
    assert resumed.step == 2 and float(resumed.loss.quantizers["int8"].step.detach()) == pytest.approx(value)

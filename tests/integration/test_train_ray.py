"""Ray Train on a real local Ray: two CPU workers with GradCache and cross-worker negatives match the
single-process full batch; a worker killed mid-run is replaced and training resumes from the checkpoint
with the same step count and sampler position."""

from __future__ import annotations

import csv

import pytest
from train_faults import assert_uninterrupted_batches, fit_killing_rank1

from omniret.config import SyntheticConfig, load_config
from omniret.data.synthetic import generate_benchmark
from omniret.training import checkpoint as ckpt
from omniret.training.logbook import read_events
from omniret.training.trainer import fit

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    generate_benchmark(root, SyntheticConfig(train_per_task=16, eval_queries=2,
                                             tasks=["syn_cls_color", "syn_t2i", "syn_it2i"]))
    return root


def _cfg(tiny_dirs, bench, out, name, *extra):
    return load_config(None, [
        f"model.path={tiny_dirs['qwen2_vl']}", f"data.train=[{bench / 'train'}]", f"eval.root={bench / 'eval'}",
        f"train.output_dir={out}", f"train.name={name}", "train.batch_size=8", "train.query_chunk_size=2",
        "train.target_chunk_size=2", "train.negatives=1", "train.eval_at_end=false", "train.checkpoint_every=0",
        "train.mode=lora", "lora.r=4", "lora.dropout=0.0", "train.lr=1e-3", "loss.temperature=0.05",
        "loss.mask_duplicates=false", "train.cpus_per_worker=1", *extra])


def _rows(run_dir):
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def test_two_workers_gradcache_cross_worker_negatives_match_one_process(ray_session, tiny_dirs, bench, tmp_path):
    two = fit(_cfg(tiny_dirs, bench, tmp_path, "two", "train.workers=2", "train.max_steps=3"))
    one = fit(_cfg(tiny_dirs, bench, tmp_path, "one", "train.workers=1", "train.max_steps=3"), local=True)
    rows_two, rows_one = _rows(two.run_dir), _rows(one.run_dir)
    assert [r["step"] for r in rows_two] == ["1", "2", "3"]
    for r2, r1 in zip(rows_two, rows_one, strict=True):
        assert r2["batch"] == r1["batch"] and r2["pairs"] == "8"
        # each worker holds 4 rows; every query sees all 8 targets of both workers + its hard negative
        assert float(r2["num_negatives"]) == pytest.approx(8.0)
        # the mean of the workers' losses is the full-batch loss, and the updates agree step after step
        assert float(r2["loss"]) == pytest.approx(float(r1["loss"]), rel=2e-4)
    last = two.run_dir / "checkpoint_000003"
    assert {p.name for p in (last / ckpt.STATE_DIR).iterdir()} >= {"rng_rank0.pt", "rng_rank1.pt", "optimizer.pt"}
    assert (two.final / "adapter" / "adapter_config.json").is_file()
    assert read_events(two.run_dir)[0]["world_size"] == 2


def test_two_reranker_workers_match_one_process(ray_session, tiny_dirs, bench, tmp_path):
    """The reranker step on Ray Train: the mean of the workers' pointwise losses is the full-batch loss and
    the averaged gradients give the same updates, step after step."""
    extra = ("train.objective=rerank", f"rerank.model.path={tiny_dirs['qwen2_vl']}", "train.max_steps=3")
    two = fit(_cfg(tiny_dirs, bench, tmp_path, "rr-two", "train.workers=2", *extra))
    one = fit(_cfg(tiny_dirs, bench, tmp_path, "rr-one", "train.workers=1", *extra), local=True)
    rows_two, rows_one = _rows(two.run_dir), _rows(one.run_dir)
    assert [r["step"] for r in rows_two] == ["1", "2", "3"]
    for r2, r1 in zip(rows_two, rows_one, strict=True):
        assert r2["batch"] == r1["batch"] and r2["pairs"] == "8" and r2["hard_negatives"] == "1"
        assert float(r2["loss"]) == pytest.approx(float(r1["loss"]), rel=2e-4)
    assert (two.final / "adapter" / "adapter_config.json").is_file()


def test_killed_worker_resumes_from_checkpoint_with_same_steps_and_sampler(ray_session, tiny_dirs, bench, tmp_path):
    total = 30
    cfg = _cfg(tiny_dirs, bench, tmp_path, "killed", "train.workers=2", f"train.max_steps={total}",
               "train.checkpoint_every=3", "train.max_failures=1", "train.num_to_keep=2")
    run_dir = tmp_path / "killed"
    outcome, registered = fit_killing_rank1(cfg, run_dir, before_step=total - 6)
    assert "result" in outcome

    events = read_events(run_dir)
    resumes = [e for e in events if e["event"] == "resume"]
    assert len(resumes) == 1
    resumed_at = resumes[0]["step"]
    assert resumed_at % 3 == 0 and resumed_at >= registered
    sampler_state = resumes[0]["sampler"]  # restored from the checkpoint: 6 batches per epoch here
    assert (sampler_state["epoch"], sampler_state["position"]) == divmod(resumed_at, 6)
    assert next(e for e in events if e["event"] == "done")["step"] == total

    # every step, including those redone after the failure, drew exactly the uninterrupted run's batch
    assert_uninterrupted_batches(cfg, run_dir, total)
    assert ckpt.read_state(run_dir / f"checkpoint_{total:06d}")["step"] == total

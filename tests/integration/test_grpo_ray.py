"""UME-R1's GRPO on Ray Train with two CPU workers: rollouts are sampled inside the workers, rewards see
both workers' completions, checkpoints carry the run, and a worker killed mid-run is replaced and the run
resumes from the latest checkpoint with the same step count and batches."""

from __future__ import annotations

import pytest
from train_faults import assert_uninterrupted_batches, fit_killing_rank1

from omniret.config import SyntheticConfig, load_config
from omniret.data.synthetic import generate_benchmark
from omniret.models.backbone import load_backbone
from omniret.models.gen_tokens import add_embedding_tokens
from omniret.models.generative import has_embedding_tokens
from omniret.training import checkpoint as ckpt
from omniret.training.logbook import read_events

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_dirs):
    root = tmp_path_factory.mktemp("grpo")
    generate_benchmark(root / "bench", SyntheticConfig(train_per_task=8, eval_queries=2,
                                                       tasks=["syn_cls_color", "syn_t2i"]))
    # The start of a GRPO stage: a checkpoint with UME-R1's tokens (an SFT stage's output).
    source = tiny_dirs["qwen2_vl"]
    backbone = load_backbone(load_config(None, [f"model.path={source}"]).model)
    add_embedding_tokens(backbone.model, backbone.tokenizer, "qwen2_vl")
    backbone.model.save_pretrained(root / "start")
    backbone.tokenizer.save_pretrained(root / "start")
    ckpt.copy_side_files(source, root / "start")
    return root


def test_two_worker_grpo_checkpoints_and_resumes_after_a_killed_worker(ray_session, setup, tmp_path):
    total = 8
    cfg = load_config(None, [
        f"model.path={setup / 'start'}", f"data.train=[{setup / 'bench' / 'train'}]",
        f"eval.root={setup / 'bench' / 'eval'}", f"train.output_dir={tmp_path}", "train.name=grpo",
        "train.objective=ume_grpo", "train.mode=full", "train.workers=2", "train.cpus_per_worker=1",
        "train.batch_size=4", f"train.max_steps={total}", "train.checkpoint_every=2", "train.max_failures=1",
        "train.num_to_keep=2", "train.eval_at_end=false", "train.lr=1e-4", "grpo.num_generations=2",
        "grpo.max_completion_length=6"])
    run_dir = tmp_path / "grpo"
    outcome, registered = fit_killing_rank1(cfg, run_dir, before_step=total - 2, timeout=300)
    assert "result" in outcome

    events = read_events(run_dir)
    resumes = [e for e in events if e["event"] == "resume"]
    assert len(resumes) == 1 and resumes[0]["world_size"] == 2
    resumed_at = resumes[0]["step"]
    assert resumed_at % 2 == 0 and resumed_at >= registered
    assert next(e for e in events if e["event"] == "done")["step"] == total
    # every step, including those redone after the failure, trained on the uninterrupted run's batch
    for row in assert_uninterrupted_batches(cfg, run_dir, total):
        assert row["pairs"] == "4"
        # 2 pairs x G=2 completions per worker and side, scored against both workers' completions
        assert 0.0 <= float(row["format_reward"]) <= 1.0 and float(row["completion_tokens"]) > 0
    last = run_dir / f"checkpoint_{total:06d}"
    assert ckpt.read_state(last)["step"] == total
    assert {p.name for p in (last / ckpt.STATE_DIR).iterdir()} >= {"rng_rank0.pt", "rng_rank1.pt", "optimizer.pt"}
    # the output is a UME-R1 checkpoint: the trained weights with the embedding tokens
    final = load_backbone(load_config(None, [f"model.path={run_dir / 'final'}"]).model)
    assert has_embedding_tokens(final.tokenizer)

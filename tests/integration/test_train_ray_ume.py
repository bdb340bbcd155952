"""UME-R1 SFT on Ray Train: two CPU workers (GradCache, targets gathered across workers, token counts
all-gathered for the next-token mean) give the single-process full-batch loss step after step, and the
checkpoint carries the embedding tokens."""

from __future__ import annotations

import csv

import pytest

from omniret.config import SyntheticConfig, load_config
from omniret.models.generative import has_embedding_tokens
from omniret.training.trainer import fit

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from omniret.data.synthetic import generate_benchmark
    from omniret.reasoning.job import run_teacher

    root = tmp_path_factory.mktemp("ume-ray-bench")
    generate_benchmark(root, SyntheticConfig(train_per_task=8, eval_queries=2, tasks=["syn_t2i", "syn_vqa"]))
    run_teacher(load_config(None, [f"reason.pairs=[{root / 'train'}]", "reason.sides=both",
                                   f"reason.out={root / 'teacher'}"]))
    return root


def _cfg(tiny_dirs, bench, out, name, *extra):
    return load_config(None, [
        f"model.path={tiny_dirs['qwen2_vl']}", f"data.train=[{bench / 'train'}]", f"eval.root={bench / 'eval'}",
        f"train.output_dir={out}", f"train.name={name}", "train.objective=ume_sft", "train.mode=full",
        "train.negatives=0", "model.reasoning=both", f"model.reasoning_from=[{bench / 'teacher'}]",
        "media.max_pixels=50176", "train.batch_size=8", "train.max_steps=2", "train.lr=1e-3", "train.warmup_ratio=0",
        "train.eval_at_end=false", "train.checkpoint_every=0", "train.cpus_per_worker=1", "ume.max_target_tokens=48",
        *extra])


def _rows(run_dir):
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def test_two_workers_match_one_process_and_checkpoint_the_tokens(ray_session, tiny_dirs, bench, tmp_path):
    two = fit(_cfg(tiny_dirs, bench, tmp_path, "two", "train.workers=2", "train.query_chunk_size=2",
                   "train.target_chunk_size=2"))
    one = fit(_cfg(tiny_dirs, bench, tmp_path, "one", "train.workers=1", "train.gradcache=false"), local=True)
    rows_two, rows_one = _rows(two.run_dir), _rows(one.run_dir)
    assert [r["step"] for r in rows_two] == ["1", "2"]
    for r2, r1 in zip(rows_two, rows_one, strict=True):
        assert r2["batch"] == r1["batch"] and r2["pairs"] == "8" and float(r2["gen_found"]) == 1.0
        assert float(r2["loss"]) == pytest.approx(float(r1["loss"]), rel=2e-4)
    from transformers import AutoTokenizer

    assert has_embedding_tokens(AutoTokenizer.from_pretrained(two.run_dir / "final"))

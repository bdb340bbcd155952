"""Reranker training (train.objective=rerank) through the training worker: the yes/no gap widens, groups are
built as documented, and the stage's output loads as rerank.model."""

from __future__ import annotations

import numpy as np
import pytest

from omniret.config import SyntheticConfig, load_config
from omniret.data.mixing import load_mixture
from omniret.training.context import LocalContext
from omniret.training.loop import TrainWorker
from omniret.training.rerank import encode_groups


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from omniret.data.synthetic import generate_benchmark

    root = tmp_path_factory.mktemp("rerank-bench")
    generate_benchmark(root, SyntheticConfig(train_per_task=16, eval_queries=4, tasks=["syn_t2i", "syn_cls_color"]))
    return root


def _cfg(tiny_dirs, bench, run_root, *overrides):
    return load_config(None, [
        f"model.path={tiny_dirs['qwen2_vl']}", f"rerank.model.path={tiny_dirs['qwen2_vl']}",
        f"data.train=[{bench / 'train'}]", f"eval.root={bench / 'eval'}", f"train.output_dir={run_root}",
        "train.name=rr", "train.objective=rerank", "train.mode=full", "media.max_pixels=50176", "train.batch_size=8",
        "train.query_chunk_size=4", "train.lr=1e-3", "train.checkpoint_every=0", "train.eval_at_end=false",
        "train.torch_threads=1", "train.negatives=1", "train.warmup_ratio=0", *overrides])


def _gap(worker, pairs) -> float:
    """mean p(yes | positive) - mean p(yes | negative) over ``pairs`` under the model in training."""
    reranker = worker.objective.reranker
    pos, neg = [], []
    with worker.evaluating():
        for p in pairs:
            scores = reranker.score(p.query.to_item(), [p.positives[0].to_item(), p.negatives[0].to_item()],
                                    p.query.instruction)
            pos.append(scores[0])
            neg.append(scores[1])
    return float(np.mean(pos) - np.mean(neg))


def test_a_few_reranker_steps_widen_the_yes_probability_gap(tiny_dirs, bench, text_pairs, tmp_path):
    cfg = _cfg(tiny_dirs, bench, tmp_path, "train.max_steps=16", f"data.train=[{text_pairs}]")
    run_dir = tmp_path / "rr"
    worker = TrainWorker(cfg, LocalContext(run_dir), run_dir)
    worker.setup()
    mixture, _ = load_mixture(cfg.data)
    probe = [p for pairs in mixture.groups.values() for p in pairs[:4]]
    before = _gap(worker, probe)
    rows = [worker.train_step() for _ in range(16)]
    after = _gap(worker, probe)
    assert all(r is not None and np.isfinite(r["loss"]) for r in rows)
    assert rows[0]["hard_negatives"] == 1 and not np.isnan(rows[0]["p_yes_neg"])
    assert after > before + 0.005 and after > 0, (before, after)


def test_groups_hold_the_positive_then_hard_then_in_batch_negatives(tiny_dirs, bench, backbones, tmp_path):
    from omniret.models.reranker import Reranker

    cfg = _cfg(tiny_dirs, bench, tmp_path)
    mixture, _ = load_mixture(cfg.data)
    pairs = mixture.groups["syn_t2i"][:3]
    reranker = Reranker(backbones["qwen2_vl"], cfg.media)
    out = encode_groups(pairs, reranker, negatives=1, in_batch=1)
    assert (out.group_size, out.rows, out.hard_negatives, out.in_batch_negatives) == (3, 3, 1, 1)
    q = pairs[0].query
    want = [reranker.encode_pair(q.to_item(), d.to_item(), q.instruction).input_ids
            for d in (pairs[0].positives[0], pairs[0].negatives[0], pairs[1].positives[0])]
    assert [e.input_ids for e in out.pairs[:3]] == want


def test_a_rerank_stage_starts_from_its_embedder_when_asked_and_must_rerank_to_evaluate(tiny_dirs, bench, tmp_path):
    from omniret.errors import ConfigError
    from omniret.training.trainer import resolve

    cfg = _cfg(tiny_dirs, bench, tmp_path, f"train.init_from={tiny_dirs['qwen3_vl']}", "rerank.model.path=null",
               "rerank.init_from_embedder=true", "eval.rerank_top_k=3")
    out = resolve(cfg)
    assert out.model.path == out.rerank.model.path == str(tiny_dirs["qwen3_vl"].resolve())
    with pytest.raises(ConfigError, match=r"eval\.rerank_top_k"):
        resolve(_cfg(tiny_dirs, bench, tmp_path, "train.eval_at_end=true"))

"""The Ray Data evaluation path (embedder actor pool) gives the same report as the in-process path."""

from __future__ import annotations

import pytest

from omniret.config import SyntheticConfig
from omniret.data.synthetic import generate_benchmark
from omniret.eval.mmeb import load_datasets
from omniret.eval.runner import evaluate


def test_ray_data_path_matches_in_process(ray_session, make_config, tmp_path):
    generate_benchmark(tmp_path, SyntheticConfig(held_out=1, train_per_task=1, eval_queries=4,
                                                 tasks=["syn_cls_color", "syn_t2v", "syn_grounding"]))
    overrides = [f"eval.root={tmp_path / 'eval'}", "embed.progress=false", "eval.batch_rows=8"]
    cfg = make_config("qwen2_vl", *overrides, "eval.ray=false")
    datasets, _ = load_datasets(cfg.eval)
    local = evaluate(cfg, datasets)
    remote = evaluate(make_config("qwen2_vl", *overrides, "eval.ray=true", "eval.actors=1"), datasets)
    assert local["embedding"] == "in-process" and remote["embedding"] == "ray"
    for a, b in zip(local["datasets"], remote["datasets"], strict=True):
        assert a["name"] == b["name"] and a["candidates"] == b["candidates"]
        assert a["metrics"] == pytest.approx(b["metrics"], abs=1e-6)
    assert local["summary"]["Overall"] == pytest.approx(remote["summary"]["Overall"], abs=1e-6)

"""Shared fixtures: tiny offline checkpoints (built once per session) and generated media."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """family -> directory of a tiny random checkpoint of that family."""
    from omniret.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    return {family: build_tiny_model(root / family, family=family) for family in FAMILIES}


@pytest.fixture(scope="session")
def make_config(tiny_dirs):
    """Build an OmniretConfig for a tiny family with extra overrides."""
    from omniret.config import load_config

    def make(family: str = "qwen2_vl", *overrides: str):
        return load_config(None, [f"model.path={tiny_dirs[family]}", *overrides])

    return make


@pytest.fixture(scope="session")
def backbones(make_config):
    """family -> loaded tiny Backbone (fp32, CPU)."""
    from omniret.models.backbone import load_backbone

    return {family: load_backbone(make_config(family).model) for family in FAMILIES}


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole session, reused if one is running; shut down at the end if
    started here. Never `ray stop`: it would kill every Ray process on the machine."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        from ray import serve

        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def text_pairs(tmp_path_factory):
    """A tiny text fixture whose positives and negatives differ in content (red vs blue things)."""
    import json

    folder = tmp_path_factory.mktemp("rerank-pairs")
    shapes = ["circle", "square", "triangle", "star"]
    with (folder / "colours.jsonl").open("w") as out:
        for i in range(32):
            shape = shapes[i % 4]
            out.write(json.dumps({"id": f"p{i}", "dataset": "colours", "task": "image_retrieval",
                                  "query": {"text": f"find the red {shape}"},
                                  "positives": [{"text": f"a red {shape} on the left"}],
                                  "negatives": [{"text": f"a blue {shape} on the left"}]}) + "\n")
    return folder

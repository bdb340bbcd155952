"""`omniret eval` with eval.ume_modes: disc / gen / auto side by side with latency per item; a checkpoint
without the UME-R1 tokens is refused naming the key."""

from __future__ import annotations

import shutil

import pytest

from omniret.config import SyntheticConfig, load_config
from omniret.errors import ConfigError
from omniret.eval.runner import run
from omniret.models.gen_tokens import add_embedding_tokens
from omniret.models.tiny import init_tiny_model


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from omniret.data.synthetic import generate_benchmark

    root = tmp_path_factory.mktemp("ume-eval-bench")
    generate_benchmark(root, SyntheticConfig(train_per_task=1, eval_queries=3, tasks=["syn_t2i"]))
    return root


@pytest.fixture(scope="module")
def ume_checkpoint(tiny_dirs, tmp_path_factory):
    """The tiny model with <disc_emb> / <gen_emb> added, saved as a checkpoint."""
    out = tmp_path_factory.mktemp("ume-ckpt")
    model, tok = init_tiny_model("qwen2_vl", 0, "tiny")
    add_embedding_tokens(model, tok, "qwen2_vl")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    shutil.copy2(tiny_dirs["qwen2_vl"] / "preprocessor_config.json", out / "preprocessor_config.json")
    return out


def _cfg(path, bench, *overrides):
    return load_config(None, [f"model.path={path}", f"eval.root={bench / 'eval'}", "eval.ray=false",
                              "media.max_pixels=50176", *overrides])


@pytest.mark.slow
def test_modes_side_by_side_with_latency(ume_checkpoint, bench, tmp_path):
    cfg = _cfg(ume_checkpoint, bench, "eval.ume_modes=[disc,gen,auto]", "ume.max_new_tokens=2",
               f"eval.out={tmp_path}")
    report = run(cfg)
    modes = report["ume"]["modes"]
    assert list(modes) == ["disc", "gen", "auto"]
    queries = report["datasets"][0]["queries"]
    assert modes["disc"]["items"] > queries  # queries and candidates, every mode the same items
    assert all(m["items"] == modes["disc"]["items"] for m in modes.values())
    assert all(m["seconds_per_item"] > 0 for m in modes.values())
    # auto reuses gen's generations and reports their time
    assert modes["auto"]["seconds_per_item"] == pytest.approx(modes["gen"]["seconds_per_item"])
    # the random tiny model never writes <gen_emb>: auto falls back to the discriminative embedding everywhere
    assert modes["gen"]["gen_emb_share"] == 0.0 and modes["disc"]["gen_emb_share"] is None
    assert modes["auto"]["scores"] == modes["disc"]["scores"]
    assert report["model"]["template"] == "ume_r1"
    text = (tmp_path / "report.md").read_text()
    assert "| auto |" in text and "s / item" in text


def test_a_checkpoint_without_the_tokens_is_refused_naming_the_key(tiny_dirs, bench):
    with pytest.raises(ConfigError, match=r"eval\.ume_modes needs a UME-R1 checkpoint"):
        run(_cfg(tiny_dirs["qwen2_vl"], bench, "eval.ume_modes=[gen]"))

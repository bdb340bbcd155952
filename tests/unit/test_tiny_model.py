"""The tiny offline checkpoint: builds, saves, reloads bit-exactly, deterministic, matches its tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from omniret.models.families import FAMILIES, detect_family
from omniret.models.tiny import SPECIAL_TOKENS, build_tiny_model, init_tiny_model

FAMILY_NAMES = sorted(FAMILIES)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_reloads_bit_exactly(family, tiny_dirs, backbones):
    built, _ = init_tiny_model(family, seed=0)  # what build_tiny_model saved for the fixture
    expected = built.state_dict()
    loaded = backbones[family].model.state_dict()
    assert set(loaded) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(loaded[key], tensor), key
    assert detect_family(tiny_dirs[family]).name == family


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_config_token_ids_match_tokenizer(family, backbones):
    backbone = backbones[family]
    tok, cfg = backbone.tokenizer, backbone.model.config
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert cfg.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert cfg.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert cfg.text_config.vocab_size == len(tok)
    for special in SPECIAL_TOKENS:
        assert tok.convert_ids_to_tokens(tok.convert_tokens_to_ids(special)) == special


def test_build_is_deterministic(tmp_path):
    a = build_tiny_model(tmp_path / "a", family="qwen2_vl", seed=3)
    b = build_tiny_model(tmp_path / "b", family="qwen2_vl", seed=3)
    c = build_tiny_model(tmp_path / "c", family="qwen2_vl", seed=4)
    wa, wb, wc = (load_file(p / "model.safetensors") for p in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()


def test_checkpoint_is_a_normal_hf_directory(tiny_dirs):
    path = tiny_dirs["qwen3_vl"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "preprocessor_config.json"):
        assert (path / name).is_file(), name
    pre = json.loads((path / "preprocessor_config.json").read_text())
    assert pre["patch_size"] == 16 and pre["merge_size"] == 2 and pre["temporal_patch_size"] == 2


def test_unknown_family_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="llama"):
        detect_family(tmp_path)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_presets_set_the_sizes_and_build(family, tmp_path):
    from omniret.models.tiny import PRESETS, build_tokenizer, ensure_tiny_model, tiny_config

    tokenizer = build_tokenizer()
    for name, p in PRESETS.items():
        config = tiny_config(family, tokenizer, name)
        assert (config.text_config.hidden_size, config.text_config.num_hidden_layers) == (p.hidden, p.layers)
        assert config.vision_config.depth == p.vision_depth
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        tiny_config(family, tokenizer, "huge")
    out = ensure_tiny_model(tmp_path / "mid", family=family, size="mid")
    assert json.loads((out / "config.json").read_text())["text_config"]["hidden_size"] == 128
    assert ensure_tiny_model(tmp_path / "mid", family=family, size="mid") == out  # reused: same marker

"""bench/gpu_bench.py, the parts that run without a GPU: the 2B-size config, FLOP counting, the CUDA check."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from omniret.models.families import FAMILIES
from omniret.models.tiny import build_tokenizer, tiny_config

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "bench" / "gpu_bench.py")
gpu_bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_bench)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def matmul_params(model: nn.Module, prefix: str) -> int:
    """Weights and biases of the Linear / Conv3d modules under ``prefix`` (norms left out)."""
    return sum(p.numel() for name, module in model.named_modules() if name.startswith(prefix)
               and isinstance(module, nn.Linear | nn.Conv3d) for p in module.parameters())


@pytest.mark.parametrize("size", [pytest.param("2b", marks=pytest.mark.slow), "tiny"])
def test_flop_weights_match_the_model(size, tokenizer):
    config = gpu_bench.qwen2_vl_2b_config(tokenizer) if size == "2b" else tiny_config("qwen2_vl", tokenizer)
    with torch.device("meta"):
        model = FAMILIES["qwen2_vl"].model_class()(config)
    per_patch, per_merged = gpu_bench.vision_linear_params(config.vision_config)
    assert gpu_bench.text_linear_params(config.text_config) == matmul_params(model, "model.language_model.layers")
    assert per_patch == matmul_params(model, "model.visual.patch_embed") + matmul_params(model, "model.visual.blocks")
    assert per_merged == matmul_params(model, "model.visual.merger")
    if size == "2b":  # Qwen2-VL-2B's size: 2,208,985,600 parameters (tied embeddings counted once)
        assert sum(p.numel() for p in model.parameters()) == 2_208_985_600


def test_forward_flops_hand_value(tokenizer):
    config = tiny_config("qwen2_vl", tokenizer)  # hidden 64, 2 layers, 4 heads, 2 kv heads, MLP 128
    # per layer: q 64*64+64, k and v 2*(64*32+32), o 64*64, MLP 3*64*128 -> 36,992; 2 layers
    assert gpu_bench.text_linear_params(config.text_config) == 73_984
    # 10 tokens: 2 * 73,984 * 10 + 4 * 2 layers * 64 * 10^2
    assert gpu_bench.forward_flops(config, [10], []) == 1_479_680 + 51_200
    # vision: embed 32, 2 blocks, MLP ratio 2, merge 2x2 -> hidden 64; one image of 1 x 4 x 4 patches
    block = (3 * 32 * 32 + 96) + (32 * 32 + 32) + (32 * 64 + 64) + (64 * 32 + 32)
    patch, merger = 3 * 2 * 14 * 14 * 32, (128 * 128 + 128) + (128 * 64 + 64)
    assert gpu_bench.vision_linear_params(config.vision_config) == (patch + 2 * block, merger)
    assert gpu_bench.forward_flops(config, [], [(1, 4, 4)]) == (2 * (patch + 2 * block) * 16 + 4 * 2 * 32 * 16 ** 2
                                                                + 2 * merger * 4)


def test_without_cuda_it_refuses_clearly(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["gpu_bench.py"])
    with pytest.raises(SystemExit) as exit_info:
        gpu_bench.main([])
    assert exit_info.value.code == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_peak_table():
    assert gpu_bench.peak_flops("NVIDIA H200", None) == 989e12
    assert gpu_bench.peak_flops("Some GPU", None) is None
    assert gpu_bench.peak_flops("Some GPU", 100.0) == 100e12

"""LoRA: targets, save/load, merge, and the soup of adapters as a weighted sum of deltas."""

from __future__ import annotations

import dataclasses

import torch
from PIL import Image
from safetensors.torch import load_file

from omniret.config import LoraConfig
from omniret.items import Item
from omniret.models import adapters
from omniret.models.embedder import Embedder
from omniret.models.families import FAMILIES


def _fresh_model(path):
    return FAMILIES["qwen2_vl"].model_class().from_pretrained(path, dtype=torch.float32).eval()


def _randomise_lora(peft_model, seed):
    """LoRA B starts at zero (a no-op adapter); give it values so deltas are non-trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)


def _embed(model, backbone, items):
    view = dataclasses.replace(backbone, model=model)
    return Embedder(view).encode(items)


def test_all_linear_covers_llm_and_vision_and_can_exclude_vision(tiny_dirs):
    full = adapters.attach_lora(_fresh_model(tiny_dirs["qwen2_vl"]), LoraConfig(r=4))
    names = [n for n, _ in full.named_modules() if n.endswith("lora_A")]
    assert any("visual" in n for n in names) and any("language_model" in n for n in names)
    assert not any("lm_head" in n for n in names)
    llm_only = adapters.attach_lora(_fresh_model(tiny_dirs["qwen2_vl"]), LoraConfig(r=4, include_vision=False))
    names = [n for n, _ in llm_only.named_modules() if n.endswith("lora_A")]
    assert names and not any("visual" in n for n in names)


def test_adapter_save_load_and_merge_preserve_outputs(tiny_dirs, backbones, tmp_path):
    backbone = backbones["qwen2_vl"]
    items = ["a red circle", Item(text="x", images=[Image.new("RGB", (56, 56), "red")])]
    peft_model = adapters.attach_lora(_fresh_model(tiny_dirs["qwen2_vl"]), LoraConfig(r=4, dropout=0.0))
    _randomise_lora(peft_model, 0)
    peft_model.eval()
    with_adapter = _embed(peft_model, backbone, items)
    assert abs(with_adapter - _embed(_fresh_model(tiny_dirs["qwen2_vl"]), backbone, items)).max() > 1e-4
    peft_model.save_pretrained(tmp_path / "adapter")
    reloaded = adapters.load_adapter(_fresh_model(tiny_dirs["qwen2_vl"]), tmp_path / "adapter").eval()
    torch.testing.assert_close(torch.from_numpy(_embed(reloaded, backbone, items)), torch.from_numpy(with_adapter))
    merged = adapters.merge(reloaded)
    torch.testing.assert_close(torch.from_numpy(_embed(merged, backbone, items)), torch.from_numpy(with_adapter),
                               atol=1e-5, rtol=1e-5)


def test_soup_adds_the_weighted_sum_of_deltas(tiny_dirs, tmp_path):
    base_dir = tiny_dirs["qwen2_vl"]
    deltas = []
    for k in range(2):
        peft_model = adapters.attach_lora(_fresh_model(base_dir), LoraConfig(r=4, alpha=8))
        _randomise_lora(peft_model, seed=k + 1)
        peft_model.save_pretrained(tmp_path / f"a{k}")
        deltas.append(adapters.lora_deltas(peft_model))
    out = adapters.soup(base_dir, [tmp_path / "a0", tmp_path / "a1"], [0.3, 0.7], tmp_path / "souped")
    souped = dict(_fresh_model(out).named_parameters())
    base = dict(_fresh_model(base_dir).named_parameters())
    assert deltas[0].keys() == deltas[1].keys() and deltas[0]
    for key in deltas[0]:
        expected = 0.3 * deltas[0][key] + 0.7 * deltas[1][key]
        torch.testing.assert_close(souped[key] - base[key], expected, atol=1e-6, rtol=1e-5)
    # The delta really is s * B @ A, and averaging A and B separately would give something else.
    first = next(iter(deltas[0]))
    a_files = [load_file(tmp_path / f"a{k}" / "adapter_model.safetensors") for k in range(2)]
    module = first.removesuffix(".weight")
    a_key = next(k for k in a_files[0] if module in k and "lora_A" in k)
    b_key = a_key.replace("lora_A", "lora_B")
    scaling = 8 / 4
    by_hand = [scaling * f[b_key] @ f[a_key] for f in a_files]
    torch.testing.assert_close(deltas[0][first], by_hand[0])
    naive = scaling * (0.3 * a_files[0][b_key] + 0.7 * a_files[1][b_key]) @ (
        0.3 * a_files[0][a_key] + 0.7 * a_files[1][a_key])
    assert (naive - (0.3 * by_hand[0] + 0.7 * by_hand[1])).abs().max() > 1e-5
    assert (out / "tokenizer.json").is_file() and (out / "preprocessor_config.json").is_file()

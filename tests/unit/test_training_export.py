"""A stage's output: the LoRA adapter merged in fp32 and cast to the base's stored dtype (bf16 here),
checked against a float64 merge of the saved adapter factors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from omniret.config import LoraConfig
from omniret.models import adapters
from omniret.models.families import FAMILIES
from omniret.training import checkpoint as ckpt


def test_export_final_merges_lora_in_fp32_then_casts(tiny_dirs, tmp_path):
    family = FAMILIES["qwen3_vl"]
    base = tmp_path / "base-bf16"  # the tiny Qwen3-VL stored in bf16, like the released checkpoints
    family.model_class().from_pretrained(tiny_dirs["qwen3_vl"], dtype=torch.bfloat16).save_pretrained(base)
    for name in adapters.SIDE_FILES:
        if (tiny_dirs["qwen3_vl"] / name).is_file():
            shutil.copy2(tiny_dirs["qwen3_vl"] / name, base / name)
    assert ckpt.stored_dtype(base) == torch.bfloat16

    peft_model = adapters.attach_lora(family.model_class().from_pretrained(base, dtype=torch.float32),
                                      LoraConfig(r=4))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
    checkpoint = tmp_path / "checkpoint_000001"
    peft_model.save_pretrained(checkpoint)
    (checkpoint / ckpt.INFO_FILE).write_text(json.dumps({"mode": "lora", "base": str(base), "step": 1}))

    out = ckpt.export_final(checkpoint, tmp_path / "final")
    got = load_file(out / "model.safetensors")

    # float64 reference: W = W0 + (alpha / r) * B @ A, rounded once to bf16
    base_weights = load_file(base / "model.safetensors")
    lora = load_file(checkpoint / "adapter_model.safetensors")
    config = json.loads((checkpoint / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    want = dict(base_weights)
    for key in (k for k in lora if k.endswith("lora_A.weight")):
        name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight") + ".weight"
        delta = lora[key.replace("lora_A", "lora_B")].double() @ lora[key].double()
        want[name] = (base_weights[name].double() + scale * delta).to(torch.bfloat16)
    changed = [k for k in want if not torch.equal(want[k], base_weights[k])]
    assert len(changed) > 10 and set(got) == set(want)
    for key, value in got.items():
        assert value.dtype == torch.bfloat16, key
        # one bf16 rounding of the fp32 sum: equal to the float64 reference up to one bf16 step
        torch.testing.assert_close(value.double(), want[key].double(), rtol=2**-8, atol=0)
    mismatched = sum(int((got[k] != want[k]).sum()) for k in changed)
    assert mismatched <= 1e-3 * sum(want[k].numel() for k in changed)
    assert ckpt.stored_dtype(out) == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "config.json").write_text('{"dtype": "float7"}')
        ckpt.stored_dtype(tmp_path / "bad")

"""LoRA adapters (the only module that imports peft): attach, save, load, merge, soup, and task-vector merging.

A soup merges several adapters into one checkpoint by the weighted sum of their weight deltas,
W = W0 + sum_k w_k * s_k * B_k A_k. Averaging the A and B factors separately would not do that
(the product of averages is not the average of products), so deltas are summed per layer.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.utils import merge_utils
from torch import nn

from omniret.config import LoraConfig

log = logging.getLogger(__name__)

LLM_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Files of a checkpoint directory that are not weights and travel with a merged model.
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
              "chat_template.json", "preprocessor_config.json", "video_preprocessor_config.json",
              "generation_config.json", "vocab.json", "merges.txt", "omniret_tiny.json", "omniret_embedding.json")


def peft_config(cfg: LoraConfig) -> PeftLoraConfig:
    """LoRA on all linear layers (LLM + vision tower + merger), or the LLM's only, or named suffixes."""
    if cfg.target_modules == "all-linear" and cfg.include_vision:
        targets: str | list[str] = "all-linear"
    else:
        names = LLM_LINEAR if cfg.target_modules == "all-linear" else tuple(cfg.target_modules)
        alternatives = "|".join(names)
        # peft treats a string as a full-match regex over module names.
        targets = (rf".*\.({alternatives})$" if cfg.include_vision
                   else rf".*language_model.*\.({alternatives})$")
    return PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                          bias="none")


def attach_lora(model: nn.Module, cfg: LoraConfig) -> PeftModel:
    peft_model = get_peft_model(model, peft_config(cfg))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    log.info("LoRA r=%d alpha=%s: %d of %d parameters trainable (%.2f%%)", cfg.r, cfg.alpha, trainable, total,
             100 * trainable / max(total, 1))
    return peft_model


def load_adapter(model: nn.Module, adapter_dir: str | Path, trainable: bool = False) -> PeftModel:
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)


def merge(peft_model: PeftModel) -> nn.Module:
    """Fold the adapter into the base weights and return the plain model."""
    return peft_model.merge_and_unload()


def lora_deltas(peft_model: PeftModel, adapter: str = "default") -> dict[str, torch.Tensor]:
    """Weight delta (s * B @ A) of every LoRA layer, keyed by the base model's parameter name."""
    deltas = {}
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            key = name.removeprefix("base_model.model.") + ".weight"
            deltas[key] = module.get_delta_weight(adapter).detach()
    return deltas


def soup(base_dir: str | Path, adapter_dirs: Sequence[str | Path], weights: Sequence[float],
         out_dir: str | Path) -> Path:
    """Merge ``sum_k weights[k] * delta_k`` into the base checkpoint and save it as a full checkpoint."""
    from omniret.models.families import detect_family

    if len(adapter_dirs) != len(weights) or not adapter_dirs:
        raise ValueError("soup needs one weight per adapter and at least one adapter")
    base_dir, out = Path(base_dir), Path(out_dir)
    family = detect_family(base_dir)
    model = family.model_class().from_pretrained(base_dir, dtype=torch.float32)
    total: dict[str, torch.Tensor] = {}
    for adapter_dir, weight in zip(adapter_dirs, weights, strict=True):
        wrapped = PeftModel.from_pretrained(model, str(adapter_dir))
        for key, delta in lora_deltas(wrapped).items():
            total[key] = total.get(key, 0) + weight * delta
        model = wrapped.unload()  # the base model again, without this adapter's layers
    params = dict(model.named_parameters())
    missing = sorted(set(total) - set(params))
    if missing:
        raise ValueError(f"adapter layers not found in the base model: {missing[:5]}")
    with torch.no_grad():
        for key, delta in total.items():
            params[key].add_(delta.to(params[key].dtype))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    for name in SIDE_FILES:
        if (base_dir / name).is_file():
            shutil.copy2(base_dir / name, out / name)
    log.info("souped %d adapters (weights %s) into %s", len(adapter_dirs), list(weights), out)
    return out


#: Task-vector merge methods (models/merge.py): peft's implementations of task arithmetic, TIES and DARE.
MERGE_METHODS = ("linear", "ties", "dare_linear", "dare_ties")


def merge_task_tensors(method: str, tensors: Sequence[torch.Tensor], weights: Sequence[float], *,
                       density: float = 1.0, majority_sign: str = "total", seed: int = 0) -> torch.Tensor:
    """Merge same-shaped task vectors (weight deltas) with peft's ``merge_utils``.

    linear: ``sum_k w_k t_k``. ties (Yadav et al. 2023): keep each tensor's top ``density`` fraction by
    magnitude, elect the sign of the summed trimmed values per entry, average (weighted) the entries that
    agree with it. dare_linear / dare_ties (Yu et al. 2024): drop each entry with probability
    ``1 - density`` and rescale the survivors by ``1 / density``, then linear / TIES. ``seed`` makes the
    DARE drop masks reproducible without touching the global random state.
    """
    if method not in MERGE_METHODS:
        raise ValueError(f"unknown merge method {method!r}; choose one of {', '.join(MERGE_METHODS)}")
    w = torch.tensor([float(x) for x in weights], dtype=tensors[0].dtype, device=tensors[0].device)
    if method == "linear":
        return merge_utils.task_arithmetic(list(tensors), w)
    if method == "ties":
        return merge_utils.ties(list(tensors), w, density, majority_sign)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if method == "dare_linear":
            return merge_utils.dare_linear(list(tensors), w, density)
        return merge_utils.dare_ties(list(tensors), w, density, majority_sign)


def adapter_deltas(model: nn.Module, adapter_dirs: Sequence[str | Path]) -> tuple[nn.Module, list[dict[str, torch.Tensor]]]:
    """Each adapter's weight deltas (``lora_deltas``) on ``model``; returns the unwrapped model too."""
    out = []
    for adapter_dir in adapter_dirs:
        wrapped = PeftModel.from_pretrained(model, str(adapter_dir))
        out.append(lora_deltas(wrapped))
        model = wrapped.unload()  # the base model again, without this adapter's layers
    return model, out

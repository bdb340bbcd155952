"""Load a Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint from a local directory and run it to hidden states.

Real checkpoints and the tiny offline model load through the same code. Device, dtype and attention
implementation are configurable; ``auto`` picks bf16 + flash-attention/sdpa on CUDA and fp32 + sdpa
on CPU. Position ids are always computed here from the attention mask (M-RoPE for visual tokens), so
left- and right-padded batches give the same hidden states.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from omniret.config import ModelConfig
from omniret.models.families import Family, detect_family
from omniret.models.head import EmbeddingHead, load_head, saved_head
from omniret.models.pooling import saved_pooling
from omniret.models.rematch import ReMatchTokens, load_rematch, saved_rematch
from omniret.models.tiny import ensure_tiny_model
from omniret.models.vision import VisionSpec

log = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def resolve_attention(attn: str, device: torch.device) -> str:
    if attn != "auto":
        return attn
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def checkpoint_path(cfg: ModelConfig) -> Path:
    """The configured checkpoint, or the tiny offline model (built on first use)."""
    if cfg.path:
        path = Path(cfg.path).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"model.path {path} is not a directory")
        return path
    return ensure_tiny_model(cfg.tiny_dir, family=cfg.tiny_family, seed=cfg.seed, size=cfg.tiny_preset)


def model_tag(cfg: ModelConfig, dimensions: int | None = None) -> str:
    """The one name of a model's outputs, everywhere (the index's stored tag, the API's model id):
    checkpoint folder, ``+adapter`` folder, ``@dimensions`` (Matryoshka size) when set.

    Vectors with different tags are not comparable, so an index table holds one tag only.
    """
    tag = checkpoint_path(cfg).name
    if cfg.adapter:
        tag += "+" + Path(cfg.adapter).name
    if cfg.head:
        tag += "+" + Path(cfg.head).name
    if cfg.rematch.path:
        tag += "+" + Path(cfg.rematch.path).name
    if dimensions:
        tag += f"@{dimensions}"
    return tag


@dataclass
class Backbone:
    """A loaded vision-language model with its tokenizer and vision geometry."""

    model: nn.Module
    tokenizer: object
    family: Family
    spec: VisionSpec
    path: Path
    device: torch.device
    dtype: torch.dtype
    pooling: str = "last"  # embedding read-out (omniret.models.pooling)
    head: EmbeddingHead | None = None  # TTE_u embedding head (omniret.models.head), if the checkpoint has one
    rematch: ReMatchTokens | None = None  # ReMatch learnable tokens (omniret.models.rematch), if it has them

    @property
    def core(self) -> nn.Module:
        return core_model(self.model)

    @property
    def lm_head(self) -> nn.Module:
        return unwrap(self.model).lm_head

    def hidden_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Last-layer hidden states (B, L, H) of a collated batch."""
        return forward_hidden(self.model, batch)


def unwrap(model: nn.Module) -> nn.Module:
    """The HF model under a PEFT wrapper, if any."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def core_model(model: nn.Module) -> nn.Module:
    """The transformer without the LM head (Qwen*VLModel)."""
    return unwrap(model).model


def position_ids(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """M-RoPE position ids computed from the attention mask, so padding side does not matter."""
    extra = {"second_per_grid_ts": batch["second_per_grid_ts"]} if "second_per_grid_ts" in batch else {}
    ids, _ = core_model(model).get_rope_index(
        batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
        image_grid_thw=batch.get("image_grid_thw"), video_grid_thw=batch.get("video_grid_thw"),
        attention_mask=batch["attention_mask"], **extra)
    return ids


def forward_hidden(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Run ``model`` (HF or PEFT-wrapped) on a collated batch; returns last hidden states (B, L, H).

    The LM head is skipped: embedding and reranking need hidden states only. LoRA layers are injected
    into the modules themselves, so calling the core of a PEFT-wrapped model still applies them.
    """
    param = next(model.parameters())
    batch = {k: v.to(param.device) for k, v in batch.items()}
    for key in ("pixel_values", "pixel_values_videos"):
        if key in batch:
            batch[key] = batch[key].to(param.dtype)
    kwargs = {k: batch[k] for k in ("pixel_values", "image_grid_thw", "pixel_values_videos",
                                    "video_grid_thw", "mm_token_type_ids") if k in batch}
    # A batch may bring its own position ids (packed sequences, omniret.models.rematch): then its
    # attention mask is the 4-D mask that goes with them.
    positions = batch["position_ids"] if "position_ids" in batch else position_ids(model, batch)
    out = core_model(model)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            position_ids=positions, use_cache=False, **kwargs)
    return out.last_hidden_state


def load_backbone(cfg: ModelConfig) -> Backbone:
    """Load model + tokenizer + vision spec (and a PEFT adapter, if configured)."""
    from transformers import AutoTokenizer

    path = checkpoint_path(cfg)
    family = detect_family(path) if cfg.family == "auto" else _family(cfg.family)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    attn = resolve_attention(cfg.attn_implementation, device)
    log.info("loading %s (%s) on %s as %s with %s attention", path, family.name, device, dtype, attn)
    model = family.model_class().from_pretrained(path, dtype=dtype, attn_implementation=attn)
    if cfg.adapter:
        from omniret.models.adapters import load_adapter

        model = load_adapter(model, cfg.adapter)
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    pooling = cfg.pooling if cfg.pooling != "auto" else saved_pooling(cfg.head, cfg.adapter, path) or "last"
    if cfg.head and saved_head(cfg.head) is None:
        raise FileNotFoundError(f"model.head {cfg.head} holds no embedding head (omniret_head.json)")
    head_dir = saved_head(cfg.head, path)
    head = load_head(head_dir, model).eval() if head_dir is not None else None
    rematch = _rematch(cfg, path, model)
    if head is not None and rematch is not None:
        raise ValueError(f"{path}: an embedding head and ReMatch tokens are two read-outs; use one")
    return Backbone(model, tokenizer, family, VisionSpec.from_pretrained(path), path, device, dtype, pooling, head,
                    rematch)


def _rematch(cfg: ModelConfig, path: Path, model: nn.Module) -> ReMatchTokens | None:
    """Saved ReMatch tokens: ``model.rematch.path``, else the adapter's folder, else the checkpoint's."""
    if cfg.rematch.path and saved_rematch(cfg.rematch.path) is None:
        raise FileNotFoundError(f"model.rematch.path {cfg.rematch.path} holds no ReMatch tokens (omniret_rematch.json)")
    folder = saved_rematch(cfg.rematch.path, cfg.adapter, path)
    if folder is None:
        return None
    tokens = load_rematch(folder, model)
    if cfg.rematch.tokens and cfg.rematch.tokens != tokens.k:
        raise ValueError(f"model.rematch.tokens={cfg.rematch.tokens} but {folder} holds {tokens.k} ReMatch tokens")
    return tokens.eval()


def _family(name: str) -> Family:
    from omniret.models.families import FAMILIES

    return FAMILIES[name]

"""Read one vector per sequence out of the last hidden states; Matryoshka truncation.

Last-token pooling (``last``, the default of every Qwen-VL embedding recipe) takes, per row, the last
position whose attention mask is 1. That is correct for left padding (position -1), right padding
(position mask.sum()-1) and no padding alike. Mean pooling (``mean``, SAIL-Embedding's read-out,
METHODS §9.2) averages the hidden states of the attended positions, so padding does not count either.
SAIL applies tanh to the states first (MeanPool(tanh(F(T)))); that belongs to its bidirectional
model and is not applied here.

A model trained with a pooling records it in ``omniret_embedding.json`` beside its weights (or its
adapter), and ``model.pooling: auto`` reads it back, so a checkpoint embeds the way it was trained.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

POOLINGS = ("last", "mean")
POOLING_FILE = "omniret_embedding.json"


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last attended position of each row (B,)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.bool() * (positions + 1)).argmax(dim=1)


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L, H) hidden states -> (B, H) states of the last attended token."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, last_token_index(attention_mask)]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L, H) hidden states -> (B, H) mean over the attended positions (mask-weighted, in fp32)."""
    mask = attention_mask.to(device=hidden.device, dtype=torch.float32)[..., None]
    total = (hidden.float() * mask).sum(dim=1)
    return (total / mask.sum(dim=1).clamp(min=1.0)).to(hidden.dtype)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, method: str = "last") -> torch.Tensor:
    """The configured read-out: ``last`` or ``mean``."""
    if method == "last":
        return last_token_pool(hidden, attention_mask)
    if method == "mean":
        return mean_pool(hidden, attention_mask)
    raise ValueError(f"unknown pooling {method!r}; choose one of {', '.join(POOLINGS)}")


def first_holding(name: str, *folders: str | Path | None) -> Path | None:
    """The first of ``folders`` (None skipped) with a file ``name``: how a checkpoint's side records
    (pooling, TTE_u head, ReMatch tokens) are found, an adapter folder before its base."""
    for folder in folders:
        if folder is not None and (Path(folder) / name).is_file():
            return Path(folder)
    return None


def saved_pooling(*folders: str | Path | None) -> str | None:
    """The pooling recorded in the first of ``folders`` that has one (an adapter before its base)."""
    folder = first_holding(POOLING_FILE, *folders)
    if folder is None:
        return None
    path = folder / POOLING_FILE
    method = json.loads(path.read_text()).get("pooling")
    if method not in POOLINGS:
        raise ValueError(f"{path} names an unknown pooling {method!r}; choose one of {', '.join(POOLINGS)}")
    return method


def save_pooling(folder: str | Path, method: str) -> None:
    """Record ``method`` beside a model's weights (or adapter)."""
    if method not in POOLINGS:
        raise ValueError(f"unknown pooling {method!r}; choose one of {', '.join(POOLINGS)}")
    (Path(folder) / POOLING_FILE).write_text(json.dumps({"pooling": method}))


def normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, p=2, dim=-1)


def matryoshka(x: torch.Tensor, dimensions: int | None) -> torch.Tensor:
    """Keep the first ``dimensions`` dims and renormalise (truncating a unit vector shortens it)."""
    if dimensions is None or dimensions == x.shape[-1]:
        return x
    if not 0 < dimensions <= x.shape[-1]:
        raise ValueError(f"dimensions must be in [1, {x.shape[-1]}], got {dimensions}")
    return normalize(x[..., :dimensions])

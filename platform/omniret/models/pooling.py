"""Read one vector per sequence out of the last hidden states; Matryoshka truncation.

Last-token pooling takes, per row, the last position whose attention mask is 1. That is correct for
left padding (position -1), right padding (position mask.sum()-1) and no padding alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last attended position of each row (B,)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.bool() * (positions + 1)).argmax(dim=1)


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L, H) hidden states -> (B, H) states of the last attended token."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, last_token_index(attention_mask)]


def normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, p=2, dim=-1)


def matryoshka(x: torch.Tensor, dimensions: int | None) -> torch.Tensor:
    """Keep the first ``dimensions`` dims and renormalise (truncating a unit vector shortens it)."""
    if dimensions is None or dimensions == x.shape[-1]:
        return x
    if not 0 < dimensions <= x.shape[-1]:
        raise ValueError(f"dimensions must be in [1, {x.shape[-1]}], got {dimensions}")
    return normalize(x[..., :dimensions])

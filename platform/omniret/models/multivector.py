"""K vectors per item for late-interaction (MaxSim) search, read out of the last hidden states.

The papers' models give one vector per item; ReMatch's K learnable tokens give K states but fuse
them into their mean. Multi-vector search keeps K vectors per item instead and ranks by MaxSim,
sum_i max_j cos(q_i, d_j). For any Qwen-VL embedder the K vectors come from the last hidden states,
by one of two read-outs (none of the papers defines one; ``index.multivector_source``):

- ``segments`` (default): the attended positions split into K contiguous runs of (nearly) equal
  length, each run mean-pooled. The runs cover the whole input, so picture, page and frame tokens
  each land in some vector; a vector then stands for a region of the input, as ColPali's patch
  vectors do.
- ``last``: the states of the last K attended positions. With a prompt template these are mostly
  the template's own closing tokens, which under causal attention have seen the whole input; the
  last one is the last-token pooled embedding itself.

A model with ReMatch tokens (``model.rematch``) can give its own K states instead (``rematch``:
``EmbeddingModel.multivector``), with E*, their mean, as the pooled vector.

An input shorter than K positions repeats positions (a segment of one token, or the first token),
so every item has exactly K vectors. Each vector is L2-normalised (and Matryoshka-truncated with
the fused vector), so cosine is a dot product.
"""

from __future__ import annotations

import torch

SOURCES = ("segments", "last")


def _segment_means(states: torch.Tensor, k: int) -> torch.Tensor:
    """(n, H) states of one item -> (k, H) means of k contiguous runs covering them."""
    n = states.shape[0]
    starts = torch.div(torch.arange(k) * n, k, rounding_mode="floor")
    ends = torch.maximum(torch.div(torch.arange(1, k + 1) * n, k, rounding_mode="floor"), starts + 1)
    starts = torch.minimum(starts, torch.full_like(starts, n - 1))  # n < k: runs of one token, repeated
    ends = torch.minimum(ends, torch.full_like(ends, n)).clamp(min=starts + 1)
    # Prefix sums: each run's sum is two lookups, whatever its length; in float64, since a difference
    # of two long float32 sums of large activations would lose the run's own digits.
    prefix = torch.cat([states.new_zeros(1, states.shape[1], dtype=torch.float64), states.double().cumsum(dim=0)])
    return ((prefix[ends] - prefix[starts]) / (ends - starts).double()[:, None]).float()


def _last_positions(states: torch.Tensor, k: int) -> torch.Tensor:
    """(n, H) states of one item -> (k, H) states of its last k positions (the first one repeated
    in front when n < k)."""
    n = states.shape[0]
    index = torch.arange(n - k, n).clamp(min=0)
    return states[index]


def token_states(hidden: torch.Tensor, attention_mask: torch.Tensor, k: int, source: str = "segments"
                 ) -> torch.Tensor:
    """(B, L, H) last hidden states -> (B, K, H) float32 vectors, not normalised (padding never counts)."""
    if k < 1:
        raise ValueError(f"the number of vectors per item must be >= 1, got {k}")
    if source not in SOURCES:
        raise ValueError(f"unknown multi-vector source {source!r}; choose one of {', '.join(SOURCES)}")
    read = _segment_means if source == "segments" else _last_positions
    mask = attention_mask.to(hidden.device).bool()
    return torch.stack([read(hidden[b][mask[b]].float(), k) for b in range(hidden.shape[0])])

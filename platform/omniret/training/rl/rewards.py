"""UME-R1's GRPO rewards and group-normalised advantages (METHODS §5.3): pure functions, no model.

Layout convention (the same as UME-R1's trainer): completions are grouped by example, G consecutive rows per
example, so row ``i`` belongs to group ``i // G``. Query completions and target completions use the same
layout, so the G target completions of the example of query row ``i`` are columns ``g*G .. g*G+G-1`` of the
query-target similarity matrix. Similarities are dot products of L2-normalised embeddings (cosines), over
the whole gathered batch (every worker's completions).

- :func:`format_reward`: 1.0 iff ``re.search(FORMAT_PATTERN, completion, DOTALL)`` finds the format.
  ``search`` (not ``match``/``fullmatch``) as the released reward does: text before ``<think>`` or after
  ``<gen_emb>`` does not fail it.
- :func:`embedding_reward`: rank x gap per row of a similarity matrix.
- :func:`group_advantages`: (R - group mean) / (group std + 1e-4), with the *sample* std (Bessel, n-1):
  TRL's GRPOTrainer and UME-R1's trainer both call ``torch.Tensor.std(dim=1)``, whose default is unbiased.
"""

from __future__ import annotations

import re

import torch

FORMAT_PATTERN = re.compile(r"<think>.*?</think>.*?\s*<answer>.*?\s*<gen_emb>", re.DOTALL)
ADVANTAGE_EPS = 1e-4


def format_reward(completions: list[str]) -> torch.Tensor:
    """(N,) float32: 1.0 where a completion has ``<think>…</think>…<answer>…<gen_emb>``, else 0.0.

    A completion must be decoded with its special tokens kept (``<gen_emb>`` is a special token).
    """
    if isinstance(completions, str):
        raise TypeError("format_reward takes a list of completions, not one string")
    return torch.tensor([1.0 if FORMAT_PATTERN.search(c) else 0.0 for c in completions], dtype=torch.float32)


def _check_groups(rows: int, group_size: int, what: str) -> int:
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if rows % group_size:
        raise ValueError(f"{what}: {rows} rows is not a whole number of groups of {group_size}")
    return rows // group_size


def embedding_reward(sims: torch.Tensor, group_size: int) -> torch.Tensor:
    """Rank x gap reward of each row of ``sims`` (R, C): rows are completions of one side, columns the other's.

    For row ``i`` in group ``g = i // G``: S+ = ``sims[i, g*G:(g+1)*G]`` (the other side's completions of the
    same example), S- = every other column.

        rank_i = (number of S+ columns among the row's G largest) / G
        gap_i  = mean(S+) - mean(S-)
        R_i    = rank_i * gap_i

    Ties at the G-th place go to the lower column index (a stable sort), so the reward is deterministic; the
    released code uses ``torch.topk``, whose choice among equal values is unspecified. With a single group there is no
    S-: mean(S-) is taken as 0, so R = rank * mean(S+) (the released code would produce NaN there).
    For targets against queries call it with ``sims.T``.
    """
    if sims.dim() != 2:
        raise ValueError(f"sims must be 2-D (rows, columns), got shape {tuple(sims.shape)}")
    rows, cols = sims.shape
    groups = _check_groups(rows, group_size, "rows")
    if _check_groups(cols, group_size, "columns") != groups:
        raise ValueError(f"sims has {rows} rows but {cols} columns: both sides need the same groups")
    sims = sims.detach()
    g = group_size
    own = torch.arange(rows, device=sims.device) // g
    column_group = torch.arange(cols, device=sims.device) // g
    positive = own[:, None] == column_group[None, :]  # (R, C)
    top = torch.sort(sims, dim=1, descending=True, stable=True).indices[:, :g]
    rank = positive.gather(1, top).sum(dim=1).to(sims.dtype) / g
    pos_mean = (sims * positive).sum(dim=1) / g
    negatives = cols - g
    neg_mean = (sims * ~positive).sum(dim=1) / negatives if negatives else torch.zeros_like(pos_mean)
    return rank * (pos_mean - neg_mean)


def ume_r1_rewards(
    completions: list[str], own_embeddings: torch.Tensor, other_embeddings: torch.Tensor, group_size: int
) -> torch.Tensor:
    """Total reward of one side's completions: format reward + rank x gap against the other side.

    ``own_embeddings`` (N*G, D) and ``other_embeddings`` (N*G, D) are the gathered, L2-normalised
    generative embeddings; ``completions`` the decoded text of ``own`` (same order).
    """
    if len(completions) != own_embeddings.shape[0]:
        raise ValueError(f"{len(completions)} completions but {own_embeddings.shape[0]} embeddings")
    sims = own_embeddings.detach().float() @ other_embeddings.detach().float().T
    return format_reward(completions).to(sims.device) + embedding_reward(sims, group_size)


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = ADVANTAGE_EPS) -> torch.Tensor:
    """A = (R - mean_group) / (std_group + eps), std the sample (n-1) std as in TRL; G consecutive rows a group.

    A group of one has an undefined sample std; its advantage is 0 (nothing to compare against).
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D, got shape {tuple(rewards.shape)}")
    groups = _check_groups(rewards.shape[0], group_size, "rewards")
    grouped = rewards.view(groups, group_size)
    mean = grouped.mean(dim=1, keepdim=True)
    if group_size == 1:
        return torch.zeros_like(rewards)
    std = grouped.std(dim=1, keepdim=True)
    return ((grouped - mean) / (std + eps)).reshape(-1)

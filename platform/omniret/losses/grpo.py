"""UME-R1's GRPO policy loss (METHODS §5.3): clipped ratio + k3 KL, over per-token log-probabilities.

Pure torch over tensors (no model): the caller computes per-token log-probabilities of the completion
tokens under the policy (with grad), under the policy that sampled them (``old``; detached) and under the
frozen reference model. For a token t of completion i with advantage A_i:

    ratio      = exp(logp - old_logp)
    pg         = -min(ratio * A_i, clip(ratio, 1 - eps_low, 1 + eps_high) * A_i)
    kl (k3)    = exp(ref_logp - logp) - (ref_logp - logp) - 1
    token loss = pg + beta * kl
    sequence   = sum over completion tokens (mask) of token loss / max_completion_length
    loss       = mean over sequences

``max_completion_length`` is a constant (the generation budget), not the sequence's own length: UME-R1
divides by it so long and short completions weigh tokens equally. The total loss of a step is
(query loss + target loss) / 2 (:func:`ume_r1_loss`). Defaults: eps_low 0.2, eps_high 0.28, beta 0.04.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EPS_LOW = 0.2
EPS_HIGH = 0.28
BETA = 0.04


@dataclass
class GRPOLossOutput:
    loss: torch.Tensor  # scalar
    kl: torch.Tensor  # mean per-token k3 KL over completion tokens (for logging; detached)
    clip_fraction: torch.Tensor  # share of completion tokens where the clipped term was taken (detached)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(policy || reference): exp(r - l) - (r - l) - 1 >= 0."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    max_completion_length: int,
    eps_low: float = EPS_LOW,
    eps_high: float = EPS_HIGH,
    beta: float = BETA,
) -> GRPOLossOutput:
    """GRPO loss of one side (queries or targets). ``logp``/``old_logp``/``ref_logp``/``mask``: (B, T);
    ``advantages``: (B,). ``ref_logp`` may be None only when ``beta == 0``."""
    if logp.dim() != 2 or logp.shape != old_logp.shape or logp.shape != mask.shape:
        raise ValueError(f"logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)} and mask "
                         f"{tuple(mask.shape)} must all be the same (batch, tokens) shape")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must have shape ({logp.shape[0]},), got {tuple(advantages.shape)}")
    if max_completion_length < 1:
        raise ValueError(f"max_completion_length must be >= 1, got {max_completion_length}")
    if beta and ref_logp is None:
        raise ValueError("ref_logp is required when beta > 0 (the KL is against the frozen reference)")
    if ref_logp is not None and ref_logp.shape != logp.shape:
        raise ValueError(f"ref_logp must have shape {tuple(logp.shape)}, got {tuple(ref_logp.shape)}")
    mask = mask.to(logp.dtype)
    adv = advantages.to(logp.dtype)[:, None]
    ratio = torch.exp(logp - old_logp.detach())
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv
    per_token = -torch.min(unclipped, clipped)
    tokens = mask.sum().clamp(min=1)
    if beta:
        kl = k3_kl(logp, ref_logp.detach())
        per_token = per_token + beta * kl
        kl_mean = (kl.detach() * mask).sum() / tokens
    else:
        kl_mean = torch.zeros((), dtype=logp.dtype, device=logp.device)
    loss = ((per_token * mask).sum(dim=1) / max_completion_length).mean()
    clip_fraction = ((clipped < unclipped).to(logp.dtype).detach() * mask).sum() / tokens
    return GRPOLossOutput(loss=loss, kl=kl_mean, clip_fraction=clip_fraction)


def ume_r1_loss(query: GRPOLossOutput, target: GRPOLossOutput) -> torch.Tensor:
    """UME-R1's step loss: the mean of the query side's and the target side's GRPO losses."""
    return (query.loss + target.loss) / 2

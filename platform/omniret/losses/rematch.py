"""ReMatch's objective (METHODS §6.1-6.3): L = L_cl + w_orth L_orth + w_qdm L_qdm.

- L_orth, per item with K token states e_1..e_K (ẽ_i = e_i / ||e_i||):
  (2 / (K (K - 1))) sum_{i<j} (ẽ_iᵀ ẽ_j)², the mean squared cosine over the K(K-1)/2 pairs; averaged over
  every embedded item of the batch (queries, positives, negatives: the note does not say which, our choice).
  K = 1 has no pair: L_orth = 0.
- L_cl: the configured contrastive loss (the registry's, InfoNCE at τ = 0.02 in the paper) on the fused
  embeddings E* = mean(e_i), normalised.
- L_qdm: -log p(l | view) for each yes/no matching view, l = yes for the positive, no for the negative;
  p(yes) = sigmoid(logit_yes - logit_no) as in the reranker (:func:`omniret.losses.rerank.pointwise_loss`),
  averaged over the views (8 per sample).

Like every loss here it sees embeddings and logits, never the model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from omniret.losses.base import LossOutput, normalize
from omniret.losses.rerank import pointwise_loss


def orthogonality_loss(states: Tensor) -> Tensor:
    """(N, K, H) token states -> mean over items of the mean squared pairwise cosine of their K states."""
    if states.dim() != 3:
        raise ValueError(f"token states must be (N, K, H), got {tuple(states.shape)}")
    n, k, _ = states.shape
    if k < 2 or n == 0:
        return states.sum() * 0.0  # keeps the graph (and the device) for a uniform backward
    unit = normalize(states.to(torch.promote_types(states.dtype, torch.float32)))  # fp32 at least
    gram = unit @ unit.transpose(1, 2)  # (N, K, K) cosines
    upper = torch.triu(torch.ones(k, k, dtype=torch.bool, device=states.device), diagonal=1)
    per_item = gram[:, upper].pow(2).sum(dim=1) * (2.0 / (k * (k - 1)))
    return per_item.mean()


class ReMatchLoss(nn.Module):
    """``forward(q_states, t_states, n_states, qdm_logits, qdm_labels, **contrastive_kwargs)``.

    States are (B, K, H) (negatives (B, M, K, H) or None); ``inner`` is the contrastive loss on the fused,
    normalised embeddings (its learnable temperatures train as usual); ``qdm_logits`` are the matching
    views' logit_yes - logit_no with ``qdm_labels`` 1 (yes) / 0 (no), or None for no matching term.
    """

    def __init__(self, inner: nn.Module, orth_weight: float = 0.5, qdm_weight: float = 0.1):
        super().__init__()
        self.inner = inner
        self.orth_weight, self.qdm_weight = orth_weight, qdm_weight

    def forward(self, q_states: Tensor, t_states: Tensor, n_states: Tensor | None = None,
                qdm_logits: Tensor | None = None, qdm_labels: Tensor | None = None, **kwargs) -> LossOutput:
        fused = [normalize(s.float().mean(dim=-2)) for s in (q_states, t_states)]
        negatives = normalize(n_states.float().mean(dim=-2)) if n_states is not None else None
        cl = self.inner(fused[0], fused[1], negatives, **kwargs)
        every = [q_states, t_states] + ([n_states.flatten(0, 1)] if n_states is not None else [])
        orth = orthogonality_loss(torch.cat([s.float() for s in every]))
        loss = cl.loss + self.orth_weight * orth
        metrics = {**cl.metrics, "l_cl": float(cl.loss.detach()), "l_orth": float(orth.detach())}
        if qdm_logits is not None:
            qdm = pointwise_loss(qdm_logits, qdm_labels)
            loss = loss + self.qdm_weight * qdm
            with torch.no_grad():
                p = torch.sigmoid(qdm_logits.float())
                yes = qdm_labels.bool()
                metrics.update(l_qdm=float(qdm.detach()), p_yes_pos=float(p[yes].mean()),
                               p_yes_neg=float(p[~yes].mean()) if (~yes).any() else float("nan"))
        return LossOutput(loss, metrics)

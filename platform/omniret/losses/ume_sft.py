"""UME-R1's SFT loss (METHODS §5.2): ``L = L_clip(gen_q, gen_p) + L_clip(disc_q, disc_p) + NTP(q) + NTP(p)``.

``L_clip`` is the symmetric InfoNCE at tau = 0.02 (logit scale 50): the mean of the query -> target and
target -> query cross-entropies, local rows against the rows gathered across workers with their gradient
path (:class:`~omniret.losses.infonce.InfoNCE` with ``symmetric=True`` and the distributed convention of
:mod:`omniret.losses.base`). ``NTP`` is the mean next-token cross-entropy over a side's CoT target
tokens (its own mean per side, as UME-R1 takes one LM loss per side), passed in as (sum, token count) so
that a chunked step can add chunks with the full batch's normaliser.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from omniret.losses.base import LossOutput
from omniret.losses.infonce import InfoNCE


class UmeSftLoss(nn.Module):
    """The four-term SFT loss; :meth:`contrastive` is the part GradCache caches (it couples the batch)."""

    def __init__(self, temperature: float = 0.02):
        super().__init__()
        self.clip = InfoNCE(temperature, symmetric=True)

    def contrastive(self, disc_q: Tensor, disc_t: Tensor, gen_q: Tensor, gen_t: Tensor) -> LossOutput:
        gen = self.clip(gen_q, gen_t)
        disc = self.clip(disc_q, disc_t)
        metrics = {"clip_gen": float(gen.loss.detach()), "clip_disc": float(disc.loss.detach()),
                   "pos_sim_gen": gen.metrics.get("pos_sim", float("nan")),
                   "pos_sim_disc": disc.metrics.get("pos_sim", float("nan"))}
        return LossOutput(gen.loss + disc.loss, metrics)

    def forward(self, disc_q: Tensor, disc_t: Tensor, gen_q: Tensor, gen_t: Tensor,
                ntp_q: tuple[Tensor, Tensor], ntp_t: tuple[Tensor, Tensor]) -> LossOutput:
        """``ntp_*`` = (summed token cross-entropy, token count) of the queries' / targets' CoT targets."""
        clip = self.contrastive(disc_q, disc_t, gen_q, gen_t)
        nq = ntp_mean(*ntp_q)
        nt = ntp_mean(*ntp_t)
        return LossOutput(clip.loss + nq + nt,
                          {**clip.metrics, "ntp_query": float(nq.detach()), "ntp_target": float(nt.detach())})


def ntp_mean(total: Tensor, count: Tensor | float) -> Tensor:
    """Mean token loss; 0 (with the graph kept) when there is no token."""
    count = torch.as_tensor(count, dtype=total.dtype, device=total.device)
    return total / count.clamp(min=1.0)

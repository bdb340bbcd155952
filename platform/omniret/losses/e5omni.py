"""e5-omni loss: modality-aware temperature, controllable negative curriculum, masked DCL, whitened CORAL.

Source: e5-omni (arXiv 2601.03666) §3.2-§3.4 and App. B/C, read from the LaTeX source (METHODS §3). See
:mod:`omniret.losses.base` for the logit layout and the distributed convention.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from omniret.losses.base import (
    ContrastiveBatch,
    ContrastiveLoss,
    LossOutput,
    check_non_negative,
    check_probability,
    gather_rows_no_grad,
    one_hot_columns,
    similarity_logits,
)
from omniret.losses.infonce import _log_clamped, _negative_metrics, _pad_columns
from omniret.losses.temperature import TemperatureModule, check_positive

MODALITIES = ("text", "image", "audio", "video")


class ModalityTemperature(TemperatureModule):
    """Learnable raw temperature per modality, mixed by the modalities present in an input (e5-omni §3.2).

    ``tau`` is a raw vector over [text, image, audio, video] initialised at 0.02 (no exp / softplus, as in the
    paper). For an input x with presence mask ``m(x)`` (shape (4,), True where the modality occurs),
    ``w(x) = m(x) / |m(x)|`` and ``tau(x) = max(w(x)^T tau, 1e-6)``. A pair uses ``tau(q, p) = (tau(q) + tau(p)) / 2``.

    ``presence`` may be a (B, 4) bool/0-1 mask or a (B,) tensor of modality indices. ``None`` (modality unknown)
    uses the uniform mixture of all modalities; that is our choice, the paper always knows the modalities.
    """

    def __init__(self, num_modalities: int = len(MODALITIES), init: float = 0.02, min_tau: float = 1e-6):
        super().__init__()
        if int(num_modalities) != num_modalities or num_modalities < 1:
            raise ValueError(f"num_modalities must be an integer >= 1, got {num_modalities!r}")
        self.num_modalities = int(num_modalities)
        self.tau = nn.Parameter(torch.full((self.num_modalities,), check_positive("temperature init", init)))
        self.min_tau = check_positive("min_tau", min_tau)

    def forward(self, presence: Tensor | None, rows: int) -> Tensor:  # type: ignore[override]
        weights = self.mixture_weights(presence, rows)
        return (weights @ self.tau).clamp_min(self.min_tau)

    def mixture_weights(self, presence: Tensor | None, rows: int) -> Tensor:
        """(rows, M) uniform weights over the present modalities."""
        dtype, device = self.tau.dtype, self.tau.device
        if presence is None:
            return torch.full((rows, self.num_modalities), 1.0 / self.num_modalities, dtype=dtype, device=device)
        presence = torch.as_tensor(presence, device=device)
        if presence.dim() == 1 and not presence.is_floating_point() and presence.dtype != torch.bool:
            if rows and (int(presence.min()) < 0 or int(presence.max()) >= self.num_modalities):
                raise ValueError(f"modality indices must lie in [0, {self.num_modalities}), got {presence.tolist()}")
            presence = torch.nn.functional.one_hot(presence.long(), self.num_modalities)
        if presence.shape != (rows, self.num_modalities):
            raise ValueError(f"modality presence must have shape ({rows}, {self.num_modalities}) or ({rows},), "
                             f"got {tuple(presence.shape)}")
        mask = (presence != 0).to(dtype)
        count = mask.sum(1, keepdim=True)
        if bool((count == 0).any()):
            raise ValueError("every input needs at least one present modality (a row of the presence mask is empty)")
        return mask / count

    def extra_repr(self) -> str:
        return f"num_modalities={self.num_modalities}, min_tau={self.min_tau:g}"


class NegativeCurriculum(nn.Module):
    """Controllable negative curriculum (e5-omni §3.3): keep the hardest ``k`` negatives of each row.

    ``rho_t = rho_init + (rho_final - rho_init) * clip((t - t0) / (T - t0), 0, 1)`` with T = ``total_steps``;
    ``k = floor((1 - rho_t) * (B + K - 1))`` of the B + K - 1 negatives of a row (largest logits) are kept.
    Defaults rho_init 0.1, rho_final 0.5, t0 4000 (§4.1.2, App. C). ``total_steps`` has no paper default:
    it is required as soon as a step is passed; ``step=None`` means step 0.
    """

    def __init__(self, rho_init: float = 0.1, rho_final: float = 0.5, t0: int = 4000,
                 total_steps: int | None = None):
        super().__init__()
        self.rho_init = check_probability("rho_init", rho_init)
        self.rho_final = check_probability("rho_final", rho_final)
        if int(t0) != t0 or t0 < 0:
            raise ValueError(f"t0 must be an integer >= 0, got {t0!r}")
        self.t0 = int(t0)
        if total_steps is not None and (int(total_steps) != total_steps or total_steps <= self.t0):
            raise ValueError(f"total_steps must be an integer > t0 = {self.t0}, got {total_steps!r}")
        self.total_steps = None if total_steps is None else int(total_steps)

    def rho(self, step: int | None) -> float:
        if step is None:
            step = 0
        elif self.total_steps is None:
            raise ValueError("NegativeCurriculum needs total_steps to evaluate the schedule at a given step")
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if self.total_steps is None:
            return self.rho_init
        progress = min(max((step - self.t0) / (self.total_steps - self.t0), 0.0), 1.0)
        return self.rho_init + (self.rho_final - self.rho_init) * progress

    def num_kept(self, candidates: int, step: int | None) -> int:
        # The tiny epsilon keeps floor() exact when (1 - rho) * n lands on an integer up to float rounding.
        return min(candidates, max(0, math.floor((1.0 - self.rho(step)) * candidates + 1e-9)))

    def keep_mask(self, logits: Tensor, positives: Tensor, step: int | None) -> Tensor:
        """(B, C) True for the ``k`` largest non-positive logits of each row (exactly k, ties broken by topk)."""
        k = self.num_kept(logits.shape[1] - 1, step)
        keep = torch.zeros_like(positives)
        if k:
            scores = logits.detach().masked_fill(positives, float("-inf"))
            keep.scatter_(1, scores.topk(k, dim=1).indices, True)
        return keep


def group_whiten(x: Tensor, group_size: int = 64, jitter: float = 1e-4) -> Tensor:
    """Batch whitening of ``x`` (N, D) in groups of ``group_size`` dimensions (Ermolov et al. 2021, Cholesky).

    Each group's covariance ``C = Xc^T Xc / (N - 1) + jitter * I`` is factored ``C = L L^T`` and the centred group
    is mapped to ``Xc L^{-T}``, whose covariance is the identity (up to the jitter). A last group may be smaller.
    """
    n, d = x.shape
    xc = x - x.mean(0, keepdim=True)
    out = []
    for start in range(0, d, group_size):
        block = xc[:, start:start + group_size]
        cov = block.T @ block / (n - 1)
        cov = cov + jitter * torch.eye(cov.shape[0], dtype=x.dtype, device=x.device)
        chol = torch.linalg.cholesky(cov)
        out.append(torch.linalg.solve_triangular(chol, block.T, upper=False).T)
    return torch.cat(out, dim=1)


def covariance(x: Tensor) -> Tensor:
    xc = x - x.mean(0, keepdim=True)
    return xc.T @ xc / (x.shape[0] - 1)


def coral_loss(q: Tensor, p: Tensor, group_size: int = 64, jitter: float = 1e-4) -> Tensor:
    """``||Cov(Q^) - Cov(P^)||_F^2 / (4 D^2)`` with one whitening fitted on concat(Q, P) (e5-omni §3.4, App. B).

    Computed in at least fp32. Needs B >= 2 rows (covariance); returns 0 otherwise.
    """
    if q.shape[0] < 2:
        return q.new_zeros(()) * q.sum()
    dtype = torch.promote_types(q.dtype, torch.float32)
    whitened = group_whiten(torch.cat([q, p]).to(dtype), group_size, jitter)
    qh, ph = whitened[: q.shape[0]], whitened[q.shape[0]:]
    d = q.shape[1]
    return (covariance(qh) - covariance(ph)).pow(2).sum() / (4.0 * d * d)


class E5OmniLoss(ContrastiveLoss):
    """e5-omni objective: masked DCL with modality temperatures and a negative curriculum, plus whitened CORAL.

    Logits ``S_ij = s(q_i, p_j) / tau(q_i, p_j)`` over ``[B_g in-batch targets | K own negatives]`` with
    ``tau(q, p) = (tau(q) + tau(p)) / 2`` from :class:`ModalityTemperature`. ``N_i`` = the hardest
    ``k = floor((1 - rho_t)(B + K - 1))`` negatives of row i (:class:`NegativeCurriculum`)::

        L_DCL = -(1/B) sum_i log( exp(S_ii) / (exp(S_ii) + Ntilde_i) )
        Ntilde_i = max( sum_{j in N_i} exp(S_ij) - gamma_plus * exp(S_ii), eps )
        L = L_DCL + lambda_coral * ||Cov(Q^) - Cov(P^)||_F^2 / (4 D^2)

    where ``Q^, P^`` are the query / positive-target embeddings whitened by one group-wise batch whitening fitted on
    concat(Q, P) (jitter 1e-4, fp32). Defaults: tau init 0.02, gamma_plus 0.1, lambda_coral 0.05, rho 0.1 -> 0.5
    from t0 = 4000 (§4.1.2, App. C).

    Interpretations and choices (the paper is silent): whitening feeds **only** the CORAL term; the DCL logits
    use the raw normalised embeddings, since inference embeddings cannot be batch-whitened (METHODS §3.3).
    Whitening group size 64 (``whiten_group_size``), Cholesky whitening (CORAL is invariant to the choice of
    whitening rotation). eps = 1e-8. Explicit negatives take the modality of their row's positive target (the
    forward signature carries no negative modalities). Under torch.distributed CORAL uses the gathered global
    batch and the curriculum counts the global B. ``q_modality`` / ``t_modality``: (B, 4) presence masks or (B,)
    modality indices; None means unknown (uniform mixture).
    """

    def __init__(
        self,
        temperature: float = 0.02,
        gamma_plus: float = 0.1,
        eps: float = 1e-8,
        lambda_coral: float = 0.05,
        *,
        rho_init: float = 0.1,
        rho_final: float = 0.5,
        t0: int = 4000,
        total_steps: int | None = None,
        use_curriculum: bool = True,
        whiten_group_size: int = 64,
        whiten_jitter: float = 1e-4,
        num_modalities: int = len(MODALITIES),
        normalize_inputs: bool = True,
        gather: bool = True,
    ):
        super().__init__(ModalityTemperature(num_modalities, init=temperature),
                         normalize_inputs=normalize_inputs, gather=gather)
        self.gamma_plus = check_probability("gamma_plus", gamma_plus, high_open=True)
        self.eps = check_positive("eps", eps)
        self.lambda_coral = check_non_negative("lambda_coral", lambda_coral)
        self.needs_global_queries = self.lambda_coral > 0
        self.curriculum = NegativeCurriculum(rho_init, rho_final, t0, total_steps) if use_curriculum else None
        if int(whiten_group_size) != whiten_group_size or whiten_group_size < 1:
            raise ValueError(f"whiten_group_size must be an integer >= 1, got {whiten_group_size!r}")
        self.whiten_group_size = int(whiten_group_size)
        self.whiten_jitter = check_positive("whiten_jitter", whiten_jitter)

    def compute(self, batch: ContrastiveBatch) -> LossOutput:
        temp: ModalityTemperature = self.temperature  # type: ignore[assignment]
        dtype = batch.q.dtype
        tau_q = temp(batch.q_modality, batch.rows).to(dtype)
        tau_p_all = temp(gather_rows_no_grad(batch.t_modality, batch), batch.global_batch).to(dtype)
        tau_p_own = tau_p_all[batch.offset: batch.offset + batch.rows]
        pair_tau = 0.5 * (tau_q[:, None] + tau_p_all[None, :])
        if batch.num_negatives:
            neg_tau = (0.5 * (tau_q + tau_p_own))[:, None].expand(-1, batch.num_negatives)
            pair_tau = torch.cat([pair_tau, neg_tau], dim=1)
        sim = similarity_logits(batch.q, batch.t_all, batch.negatives)
        logits = sim / pair_tau
        positives = _pad_columns(one_hot_columns(batch.rows, batch.global_batch, batch.pos_cols),
                                 batch.num_negatives)
        keep = (~positives if self.curriculum is None
                else self.curriculum.keep_mask(logits, positives, batch.step))
        dcl = batch.reduce_rows(self._masked_dcl(logits, positives, keep))
        loss = dcl
        metrics = self.base_metrics(batch, tau_q)
        metrics.update(_negative_metrics(sim, positives, keep))
        metrics["dcl"] = float(dcl.detach())
        if self.curriculum is not None:
            metrics["rho"] = self.curriculum.rho(batch.step)
        if self.lambda_coral > 0:
            assert batch.q_all is not None
            # Batch-global term, identical on every rank: added unscaled (base module docstring).
            coral = coral_loss(batch.q_all, batch.t_all, self.whiten_group_size, self.whiten_jitter).to(dtype)
            loss = loss + self.lambda_coral * coral
            metrics["coral"] = float(coral.detach())
        metrics.update({f"tau_{name}": float(v) for name, v in zip(MODALITIES, temp.tau.detach(), strict=False)})
        return LossOutput(loss, metrics)

    def _masked_dcl(self, logits: Tensor, positives: Tensor, keep: Tensor) -> Tensor:
        """Per-row ``log(exp(S_ii) + max(sum_kept exp(S_ij) - gamma exp(S_ii), eps)) - S_ii`` in log space."""
        pos_logit = logits[positives]
        top = logits.detach().masked_fill(~(keep | positives), float("-inf")).max(dim=1).values
        # Mask before exp: a dropped entry must not overflow (inf * 0 would poison the gradient).
        neg_sum = torch.exp(logits.masked_fill(~keep, float("-inf")) - top[:, None]).sum(1)
        excess = neg_sum - self.gamma_plus * torch.exp(pos_logit - top)
        log_neg = _log_clamped(excess, math.log(self.eps) - top)
        return torch.logaddexp(pos_logit, log_neg + top) - pos_logit

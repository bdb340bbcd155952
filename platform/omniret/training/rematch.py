"""ReMatch's training step (``train.objective: rematch``, METHODS §6): L = L_cl + w_o L_orth + w_q L_qdm.

Per usable pair of this rank's share: the query, its first positive and ``train.negatives`` explicit
negatives are embedded with the K learnable tokens (:mod:`omniret.models.rematch`); their states give
L_orth and, fused (E* = mean), L_cl with the configured contrastive loss (``loss.*``, duplicate masks and
temperatures as in contrastive training). For the matching term each sample (q, d+, d-) becomes 8 yes/no
views (q or Z_q) x (d1, Z_d1, d2, Z_d2) of the reranker's prompt (:mod:`omniret.models.matching`), where
Z = MLP(E*) and d+ takes slot d1 or d2 by a coin flip from Python's ``random`` (seeded per rank by the
worker and restored on resume). d- is the pair's first explicit negative; with ``train.negatives: 0`` it is
the positive of the next row whose positive differs (an in-batch negative, our choice).

The whole batch is one autograd graph (the matching views feed E* back into the model), so the step is a
plain full-batch step, not GradCache: ``train.gradcache`` must be false. The 8 views go through the model
packed into one row per sample (``model.rematch.packed``) or as 8 rows; the loss is the same.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from omniret.data.schema import Pair, Side
from omniret.errors import ConfigError, MediaError
from omniret.losses.base import LossOutput
from omniret.losses.rematch import ReMatchLoss
from omniret.models.matching import MatchingViews, View
from omniret.models.reranker import Reranker
from omniret.training.gradcache import average_gradients
from omniret.training.inputs import StepInputs, encode_pairs, plan_negatives, training_side
from omniret.training.loop import ContrastiveStep, _gather_objects

log = logging.getLogger(__name__)

VIEWS = 8  # (q, Z_q) x (d1, Z_d1, d2, Z_d2)


@dataclass
class ReMatchInputs:
    base: StepInputs
    views: list[View] = field(default_factory=list)  # VIEWS per row, row-major
    labels: list[float] = field(default_factory=list)  # 1 yes (d+), 0 no (d-)
    in_batch: int = 0  # rows whose d- is another row's positive

    @property
    def rows(self) -> int:
        return self.base.rows

    @property
    def dropped(self) -> list[str]:
        return self.base.dropped


def _view(views: MatchingViews, query: Side | int, document: Side | int, instruction: str | None,
          name: str) -> View:
    def side(s: Side | int):
        return s if isinstance(s, int) else s.to_item(name=name)

    return views.encode(side(query), side(document), instruction, name)


class ReMatchStep(ContrastiveStep):
    """:class:`~omniret.training.steps.TrainStep` of ReMatch on the worker's model and its ReMatch tokens."""

    def __init__(self, worker):
        cfg = worker.cfg
        if worker.backbone.rematch is None:
            raise ConfigError("train.objective=rematch needs ReMatch tokens: set model.rematch.tokens (K, the "
                              "paper: 16) or start from a checkpoint that has them")
        if cfg.train.gradcache:
            raise ConfigError("train.objective=rematch runs full-batch steps (its matching views feed the "
                              "embeddings back into the model): set train.gradcache=false")
        super().__init__(worker)
        r = cfg.model.rematch
        self.loss = ReMatchLoss(self.loss, r.orth_weight, r.qdm_weight).to(self.device)
        self.tokens = worker.backbone.rematch
        self.matching = MatchingViews(Reranker(worker.backbone, cfg.media, cfg.rerank))

    # ---- inputs ------------------------------------------------------------------------------
    def inputs(self, pairs: Sequence[Pair]) -> ReMatchInputs:
        t = self.cfg.train
        base = encode_pairs(pairs, self.encoder, t.negatives, t.instructions, self.cache)
        out = ReMatchInputs(base)
        if not self.cfg.model.rematch.qdm_weight or not base.rows:
            return out
        planned, _ = plan_negatives(pairs, t.negatives, t.instructions)  # what encode_pairs took
        rows, m = base.rows, base.negatives_per_query
        kept = [pairs[i] for i in base.kept]
        negatives: list[tuple[Side, int]] = []  # (d- side, its latent index) per row
        for row, index in enumerate(base.kept):
            if m:
                negatives.append((planned[index][0], 2 * rows + row * m))
                continue
            others = (*range(row + 1, rows), *range(row))
            other = next((j for j in others if base.target_keys[j] != base.target_keys[row]), None)
            if other is None:
                log.warning("no in-batch negative for the matching views (every positive is the same); the step "
                            "has no L_qdm")
                return ReMatchInputs(base)
            negatives.append((training_side(kept[other].positives[0], t.instructions), rows + other))
            out.in_batch += 1
        views, labels = [], []
        try:
            for row, pair in enumerate(kept):
                query = training_side(pair.query, t.instructions)
                docs = [(training_side(pair.positives[0], t.instructions), rows + row, 1.0), (*negatives[row], 0.0)]
                if random.random() < 0.5:  # which slot holds d+ (METHODS §6.2)
                    docs.reverse()
                for q in (query, row):
                    for side, latent, label in docs:
                        for d in (side, latent):
                            views.append(self._encode_view(q, d, query.instruction, f"{pair.id or pair.dataset}"))
                            labels.append(label)
        except (MediaError, OSError, ValueError) as exc:  # the embedding inputs decoded; a view may still not fit
            log.warning("matching views left out of this step: %s", exc)
            return ReMatchInputs(base, in_batch=out.in_batch)
        out.views, out.labels = views, labels
        return out

    def _encode_view(self, query: Side | int, document: Side | int, instruction: str | None, name: str) -> View:
        make = functools.partial(_view, self.matching, query, document, instruction, name)
        if self.cache is None:
            return make()
        key = "\x00".join(["rematch", *("Z" if isinstance(s, int) else s.key() for s in (query, document))])
        encoded = self.cache.get(key, lambda: make().encoded)
        # a cached view's slots are where its slot tokens are; the latent indices are this step's
        slots = [i for i, t in enumerate(encoded.input_ids) if t == self.matching.slot_id]
        return View(encoded, [s for s in (query, document) if isinstance(s, int)], slots)

    # ---- step --------------------------------------------------------------------------------
    def run(self, inputs: ReMatchInputs, step: int) -> LossOutput:
        base = inputs.base
        keys = _gather_objects(base.target_keys if self._mask_duplicates else None)
        kwargs = self._loss_kwargs(base, [k for r in keys for k in (r or [])], step)
        network = getattr(self.net, "module", self.net)  # under DDP: gradients are averaged below
        device = next(self.net.parameters()).device.type
        cast = torch.autocast(device_type=device, dtype=self.autocast) if self.autocast else contextlib.nullcontext()
        collate = self.encoder.collate
        with self.net.no_sync() if hasattr(self.net, "no_sync") else contextlib.nullcontext():
            with cast:
                q = network.token_states(collate(base.queries))
                t = network.token_states(collate(base.targets))
                n = network.token_states(collate(base.negatives)) if base.negatives else None
                logits = labels = None
                if inputs.views:
                    every = [q, t] + ([n] if n is not None else [])
                    latents = self.tokens.project(torch.cat([s.float().mean(dim=1) for s in every]))
                    logits = self.matching.logits(inputs.views, latents, self.cfg.model.rematch.packed, VIEWS)
                    labels = torch.tensor(inputs.labels, device=logits.device)
            if n is not None:
                n = n.view(base.rows, -1, *n.shape[1:])
            out = self.loss(q, t, n, logits, labels, **kwargs)
            out.loss.backward()
        if hasattr(self.net, "no_sync"):
            average_gradients(self.net)
        if self._learnable_temperature and self.world > 1:
            average_gradients(self.loss)
        return LossOutput(out.loss.detach(), out.metrics)

    def metrics(self, inputs: ReMatchInputs, out: LossOutput) -> dict[str, float]:
        nan = float("nan")
        row = {**super().metrics(inputs.base, out), "l_cl": out.metrics.get("l_cl", nan),
               "l_orth": out.metrics.get("l_orth", nan)}
        if self.cfg.model.rematch.qdm_weight:  # the matching columns only when there is a matching term
            row.update(qdm_in_batch_negatives=inputs.in_batch,
                       **{k: out.metrics.get(k, nan) for k in ("l_qdm", "p_yes_pos", "p_yes_neg")})
        return row


"""The reranker training step (``train.objective: rerank``): yes/no cross-entropy on (query, document) pairs.

Each usable training pair becomes a group: (query, positive) labelled yes, then (query, negative)
labelled no for ``train.negatives`` explicit hard negatives of the pair file (mined with the
embedder by the mining stage) and ``rerank.in_batch_negatives`` positives of other rows of this
rank's share of the batch (rows whose positive has the same content are skipped: a shared label is
no negative). Groups are rectangular: every group gets the fewest negatives any row of the shard can
supply. Pairs are encoded by :meth:`Reranker.encode_pair`, so the prompt, truncation and media
budgets are those of inference; the instruction is the query's (none in instruction-free stages:
the reranker's default instruction).

The loss (``rerank.loss``, :mod:`omniret.losses.rerank`) is a sum over pairs (pointwise) or groups
(listwise), so chunks of ``train.query_chunk_size`` groups are forwarded and backpropagated one at
a time with a shared normaliser: the gradient is exactly the full batch's, without GradCache.
Chunks run under DDP's ``no_sync`` and gradients are averaged once afterwards, as the contrastive
step does.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from omniret.data.schema import Pair, Side
from omniret.errors import ConfigError, MediaError
from omniret.losses.base import LossOutput
from omniret.losses.rerank import RerankLoss
from omniret.models.encoding import Encoded
from omniret.models.reranker import Reranker
from omniret.training.gradcache import average_gradients
from omniret.training.inputs import EncodeCache, leave_out, training_side


@dataclass
class RerankInputs:
    pairs: list[Encoded] = field(default_factory=list)  # group-major: (q, positive), then (q, negative) ...
    group_size: int = 1
    hard_negatives: int = 0
    in_batch_negatives: int = 0
    dropped: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.pairs) // self.group_size


def _encode(reranker: Reranker, query: Side, document: Side, label: str) -> Encoded:
    return reranker.encode_pair(query.to_item(name=f"{label} query"), document.to_item(name=f"{label} document"),
                                query.instruction)


def encode_groups(pairs: Sequence[Pair], reranker: Reranker, negatives: int = 0, in_batch: int = 0,
                  instructions: bool = True, cache: EncodeCache | None = None) -> RerankInputs:
    """Encode one group per pair: the positive pair, then its hard and in-batch negative pairs."""
    k = min([negatives, *(len(p.negatives) for p in pairs)]) if pairs else 0
    sides = [(training_side(p.query, instructions), training_side(p.positives[0], instructions)) for p in pairs]
    keys = [pos.key() for _, pos in sides]
    others = [[j for j in (*range(i + 1, len(pairs)), *range(i)) if keys[j] != keys[i]] for i in range(len(pairs))]
    m = min([in_batch, *(len(o) for o in others)]) if pairs else 0
    out = RerankInputs(group_size=1 + k + m, hard_negatives=k, in_batch_negatives=m)
    for i, pair in enumerate(pairs):
        name = pair.id or pair.dataset
        query, positive = sides[i]
        documents = [positive, *(training_side(s, instructions) for s in pair.negatives[:k]),
                     *(sides[j][1] for j in others[i][:m])]
        try:
            group = []
            for d, document in enumerate(documents):
                make = functools.partial(_encode, reranker, query, document, f"{name} pair {d}")
                key = f"{query.key()}\x00{document.key()}"
                group.append(cache.get(key, make) if cache else make())
        except (MediaError, OSError, ValueError) as exc:
            leave_out(out.dropped, name, exc)
            continue
        out.pairs += group
    return out


class RerankStep:
    """:class:`~omniret.training.steps.TrainStep` of the yes/no reranker on the worker's model."""

    def __init__(self, worker):
        cfg = worker.cfg
        if cfg.train.curriculum != "none":
            raise ConfigError("train.curriculum applies to contrastive training; a rerank stage uses none")
        self.cfg, self.cache, self.autocast = cfg, worker.cache, worker.autocast
        self.reranker = Reranker(worker.backbone, cfg.media, cfg.rerank, model_id=cfg.train.name)
        self.net = worker.ctx.prepare_model(self.reranker.network)
        self.loss = RerankLoss(cfg.rerank.loss).to(worker.device)
        self._embedder = None

    def inputs(self, pairs: Sequence[Pair]) -> RerankInputs:
        t = self.cfg.train
        return encode_groups(pairs, self.reranker, t.negatives, self.cfg.rerank.in_batch_negatives,
                             t.instructions, self.cache)

    def run(self, inputs: RerankInputs, step: int) -> LossOutput:
        size, groups = inputs.group_size, inputs.rows
        norm = self.loss.normalizer(groups, size)
        chunk = self.cfg.train.query_chunk_size
        device = next(self.net.parameters()).device.type
        cast = (torch.autocast(device_type=device, dtype=self.autocast) if self.autocast
                else contextlib.nullcontext())
        total, logits = torch.zeros(()), []
        with self.net.no_sync() if hasattr(self.net, "no_sync") else contextlib.nullcontext():
            for start in range(0, groups, chunk):
                encoded = inputs.pairs[start * size:(start + chunk) * size]
                with cast:
                    z = self.net(self.reranker.encoder.collate(encoded, padding_side="left"))
                out = self.loss(z, size, norm)
                out.loss.backward()
                total += out.loss.detach().cpu()
                logits.append(z.detach())
        if hasattr(self.net, "no_sync"):
            average_gradients(self.net)
        return LossOutput(total, self.loss(torch.cat(logits), size).metrics)

    def metrics(self, inputs: RerankInputs, out: LossOutput) -> dict[str, float]:
        return {"hard_negatives": inputs.hard_negatives, "in_batch_negatives": inputs.in_batch_negatives,
                **{k: out.metrics.get(k, float("nan")) for k in ("p_yes_pos", "p_yes_neg", "pos_above_neg")}}

    def eval_models(self) -> dict[str, Any]:
        """The embedder of ``model`` retrieves (loaded once, never trained here); the reranker in training reranks."""
        if self._embedder is None:
            from omniret.models.embedder import Embedder

            cfg = self.cfg.model_copy(deep=True)
            cfg.embed.progress = False
            self._embedder = Embedder.from_config(cfg)
        return {"embedder": self._embedder, "reranker": self.reranker}

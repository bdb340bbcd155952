"""UME-R1's SFT step (``train.objective: ume_sft``, METHODS §5.2): one model learns to reason, then embed.

Each usable pair gives a query and its first positive, each rendered with UME-R1's prompt
(:class:`~omniret.models.generative.GenerativeEmbedder`) and followed, teacher-forced, by its CoT
target ``<think>…</think><answer>…</answer><gen_emb><|im_end|>``, built from the side's teacher trace
(``<think>facts</think> summary``: ``omniret reason --teacher`` writes them and ``model.reasoning=both
model.reasoning_from=[…]`` attaches them to the sides). One forward pass over prompt + target gives
the discriminative embedding (``<disc_emb>`` of the prompt), the generative one (the target's
``<gen_emb>``) and the next-token loss of the target tokens (never of the prompt). The loss is
:class:`~omniret.losses.ume_sft.UmeSftLoss`. A side without a trace leaves its pair out of the step
(UME-R1 trains every sample with a CoT). Explicit hard negatives are not used (UME-R1's SFT has only
in-batch ones), so ``train.negatives`` must be 0.

Before the first step ``<disc_emb>`` / ``<gen_emb>`` are added to the model and tokenizer when the
checkpoint lacks them (rows initialised per :data:`~omniret.models.gen_tokens.INIT_SOURCES`); the
tokenizer is saved into every checkpoint, so ``final/`` is a UME-R1 checkpoint. That grows the
vocabulary, so the step trains every parameter (``train.mode: full``; LoRA would leave the new rows at
their initial values and cannot save a grown vocabulary as an adapter).

GradCache (``train.gradcache``): the two contrastive terms couple the batch, so they are computed on
cached embeddings of a no-grad pass (chunks of ``train.query_chunk_size`` queries / ``target_chunk_size``
targets), then each chunk is forwarded again with autograd and backpropagates
``<disc, dL/d disc> + <gen, dL/d gen> + NTP_sum / tokens_of_the_side``: the NTP terms are sums over
tokens, exact per chunk with the full batch's normaliser and need no cache. Without GradCache the
whole local batch is one forward per side. Either way the gradient is the full batch's. On several
workers NTP is the per-token mean over every worker's targets (token counts are all-gathered), so two
workers train exactly as one process on the same batch.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from omniret.data.schema import Pair, Side
from omniret.errors import ConfigError, MediaError
from omniret.losses.base import LossOutput, all_gather_no_grad, dist_info
from omniret.losses.ume_sft import UmeSftLoss, ntp_mean
from omniret.models.encoding import Encoded
from omniret.models.gen_tokens import add_embedding_tokens
from omniret.models.generative import GenerativeEmbedder, UmeNetwork, pad_completions
from omniret.training.gradcache import RngState, average_gradients, chunked
from omniret.training.inputs import EncodeCache, leave_out, training_side

log = logging.getLogger(__name__)

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def cot_target(trace: str) -> str:
    """UME-R1's target text (before ``<gen_emb>``) from a trace ``<think>facts</think> summary``.

    A trace without ``</think>`` (a truncated reasoning) is all thinking, with an empty answer.
    """
    text = trace.strip()
    if text.startswith(THINK_OPEN):
        text = text[len(THINK_OPEN):]
    think, closed, answer = text.partition(THINK_CLOSE)
    if not closed:
        think, answer = text, ""
    return f"{THINK_OPEN}{think.strip()}{THINK_CLOSE}<answer>{answer.strip()}</answer>"


def target_ids(view: GenerativeEmbedder, trace: str, max_tokens: int) -> list[int]:
    """Ids of the CoT target: plain-text tokens (a trace cannot forge control tokens), then ``<gen_emb>`` and
    ``<|im_end|>`` by id; too long, the thinking is cut from its end so the answer and tokens stay."""
    text = cot_target(trace)
    head, _, rest = text.partition(THINK_CLOSE)
    close = view.encoder.tokenize(THINK_CLOSE + rest)
    tail = [view.gen_id, view.im_end_id]
    think = view.encoder.tokenize(head)[:max(0, max_tokens - len(close) - len(tail))]
    return [*think, *close, *tail]


@dataclass
class UmeInputs:
    queries: list[Encoded] = field(default_factory=list)
    targets: list[Encoded] = field(default_factory=list)
    query_cot: list[list[int]] = field(default_factory=list)
    target_cot: list[list[int]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.queries)


def encode_ume(pairs: Sequence[Pair], view: GenerativeEmbedder, max_target_tokens: int, instructions: bool = True,
               cache: EncodeCache | None = None) -> UmeInputs:
    """Prompts and CoT targets of each pair's query and first positive; a pair that fails is dropped."""
    out = UmeInputs()
    for pair in pairs:
        name = pair.id or pair.dataset
        try:
            sides = [training_side(pair.query, instructions), training_side(pair.positives[0], instructions)]
            encoded, cots = [], []
            for side, role in zip(sides, ("query", "positive"), strict=True):
                if not (side.reasoning or "").strip():
                    raise ValueError(f"the {role} has no teacher trace (model.reasoning=both and "
                                     "model.reasoning_from=[<omniret reason --teacher output>])")
                encoded.append(_prompt(view, side, f"{name} {role}", cache))
                cots.append(target_ids(view, side.reasoning, max_target_tokens))
        except (MediaError, OSError, ValueError) as exc:
            leave_out(out.dropped, name, exc)
            continue
        out.queries.append(encoded[0])
        out.targets.append(encoded[1])
        out.query_cot.append(cots[0])
        out.target_cot.append(cots[1])
    return out


def _prompt(view: GenerativeEmbedder, side: Side, label: str, cache: EncodeCache | None) -> Encoded:
    def make() -> Encoded:
        return view.encoder.encode(side.to_item(name=label))

    # the key names the prompt style: the cache may hold this side encoded for another objective
    return cache.get("ume_r1\x00" + side.key(), make) if cache else make()


class UmeSftStep:
    """:class:`~omniret.training.steps.TrainStep` of UME-R1's SFT on the worker's model."""

    def __init__(self, worker):
        cfg = worker.cfg
        t = cfg.train
        if t.negatives:
            raise ConfigError("train.objective=ume_sft uses in-batch negatives only (UME-R1's SFT): set train.negatives=0")
        if t.curriculum != "none":
            raise ConfigError("train.curriculum applies to contrastive training; a ume_sft stage uses none")
        backbone = worker.backbone
        if t.mode != "full":
            raise ConfigError("train.objective=ume_sft adds <disc_emb> / <gen_emb> to the vocabulary and trains "
                              "them: it needs train.mode=full")
        report = add_embedding_tokens(backbone.model, backbone.tokenizer, backbone.family.name)
        log.info("UME-R1 embedding tokens: %s", report)
        self.cfg, self.cache, self.autocast = cfg, worker.cache, worker.autocast
        self.view = GenerativeEmbedder(backbone, cfg.media, cfg.model.max_length, cfg.ume.batch_size)
        self.net = worker.ctx.prepare_model(UmeNetwork(backbone.model, self.view))
        self.loss = UmeSftLoss(cfg.ume.temperature).to(worker.device)

    def inputs(self, pairs: Sequence[Pair]) -> UmeInputs:
        return encode_ume(pairs, self.view, self.cfg.ume.max_target_tokens, self.cfg.train.instructions, self.cache)

    def save_files(self, folder) -> None:
        """Checkpoints carry the tokenizer with the embedding tokens (the base's would lack them)."""
        self.view.backbone.tokenizer.save_pretrained(str(folder))

    # ---- forward -----------------------------------------------------------------------------
    def _cast(self):
        device = next(self.net.parameters()).device.type
        return torch.autocast(device_type=device, dtype=self.autocast) if self.autocast else contextlib.nullcontext()

    def _forward(self, prompts: list[Encoded], cots: list[list[int]]):
        batch, length, mask = self.view.completion_batch(self.view.collate(prompts),
                                                         *pad_completions(cots, self.view.pad_id))
        with self._cast():
            return self.net(batch, length, mask)

    def run(self, inputs: UmeInputs, step: int) -> LossOutput:
        sync = self.net.no_sync() if hasattr(self.net, "no_sync") else contextlib.nullcontext()
        with sync:
            out = self._gradcache(inputs) if self.cfg.train.gradcache else self._plain(inputs)
        if hasattr(self.net, "no_sync"):
            average_gradients(self.net)
        return out

    def _token_norm(self, cots: list[list[int]]) -> float:
        """The NTP normaliser of one side on this rank: its target tokens on every rank / world size. A rank's
        ``sum / norm`` then averages over ranks (DDP's gradient average) to the global per-token mean, as the
        contrastive losses' rank convention does (omniret.losses.base)."""
        _, world = dist_info()
        count = torch.tensor([float(sum(len(c) for c in cots))], dtype=torch.float64,
                             device=next(self.net.parameters()).device)
        return float(all_gather_no_grad(count).sum()) / world

    def _plain(self, inputs: UmeInputs) -> LossOutput:
        dq, gq, fq, sq, _ = self._forward(inputs.queries, inputs.query_cot)
        dt, gt, ft, st, _ = self._forward(inputs.targets, inputs.target_cot)
        nq, nt = self._token_norm(inputs.query_cot), self._token_norm(inputs.target_cot)
        out = self.loss(dq, dt, gq, gt, (sq, nq), (st, nt))
        out.loss.backward()
        out.metrics["gen_found"] = float(torch.cat([fq, ft]).float().mean())
        return LossOutput(out.loss.detach(), out.metrics)

    def _gradcache(self, inputs: UmeInputs) -> LossOutput:
        t = self.cfg.train
        sides = [(inputs.queries, inputs.query_cot, t.query_chunk_size),
                 (inputs.targets, inputs.target_cot, t.target_chunk_size)]
        plans, cached, found = [], [], []
        with torch.no_grad():  # 1. embeddings of every chunk, without a graph
            for prompts, cots, size in sides:
                chunks = list(zip(chunked(prompts, size), chunked(cots, size), strict=True))
                states, disc, gen = [], [], []
                for p, c in chunks:
                    states.append(RngState.capture())
                    d, g, f, _, _ = self._forward(list(p), list(c))
                    disc.append(d)
                    gen.append(g)
                    found.append(f)
                plans.append((chunks, states))
                cached.append((torch.cat(disc).requires_grad_(), torch.cat(gen).requires_grad_()))
        # 2. the contrastive terms on the cached embeddings: d L / d embedding of every row
        (dq, gq), (dt, gt) = cached
        clip = self.loss.contrastive(dq, dt, gq, gt)
        clip.loss.backward()
        side_tokens = [self._token_norm(inputs.query_cot), self._token_norm(inputs.target_cot)]
        ntp = []
        # 3. each chunk again with autograd: the cached gradient and its share of the NTP mean
        for (chunks, states), (disc, gen), count in zip(plans, cached, side_tokens, strict=True):
            total, row = torch.zeros(()), 0
            for (p, c), state in zip(chunks, states, strict=True):
                with state.replay():
                    d, g, _, s, _ = self._forward(list(p), list(c))
                rows = slice(row, row + len(p))
                row += len(p)
                surrogate = ((d * disc.grad[rows].to(d.device)).sum() + (g * gen.grad[rows].to(g.device)).sum()
                             + ntp_mean(s, count))
                surrogate.backward()
                total += ntp_mean(s.detach().cpu(), count)
            ntp.append(total)
        metrics = {**clip.metrics, "ntp_query": float(ntp[0]), "ntp_target": float(ntp[1]),
                   "gen_found": float(torch.cat(found).float().mean())}
        return LossOutput(clip.loss.detach().cpu() + ntp[0] + ntp[1], metrics)

    def metrics(self, inputs: UmeInputs, out: LossOutput) -> dict[str, float]:
        keys = ("clip_gen", "clip_disc", "pos_sim_gen", "pos_sim_disc", "ntp_query", "ntp_target", "gen_found")
        return {k: out.metrics.get(k, float("nan")) for k in keys}

    def eval_models(self) -> dict[str, Any]:
        """The discriminative read-out of the model in training, as an embedder for the in-training evaluation."""
        from omniret.models.generative import UmeModeEmbedder

        return {"embedder": UmeModeEmbedder(self.view, "disc", self.cfg.ume.max_new_tokens)}

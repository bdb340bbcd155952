"""The reasoner SFT step (``train.objective: reason_sft``, TTE_s): next-token NLL on stored ECR.

Think-Then-Embed's TTE_s (METHODS §7.1) distils a teacher's embedding-centric reasoning into a
reasoner of the embedder's size: supervised fine-tuning on the teacher's ECR, the loss on the ECR
tokens only (the paper: full parameters, vision frozen, lr 2e-5, batch 128, one epoch).

Examples. Each training pair gives one example per side that ``reason.sides`` chooses (the query;
the positives and the first ``train.negatives`` negatives) and that has a record in
``reason.sft_from`` (records of ``reason.sft_reasoner`` only, when set) for the template its task
maps to (``reason.template``), found by content hash as the ECR job keys it. Sides without one are
left out; a pair left with none is counted in ``dropped``.

Tokens. The prompt is exactly the reasoner's inference prompt (:meth:`Reasoner.encode`: system
turn, template instruction, the item, and the assistant turn opened with ``<think>``), so the
trained checkpoint writes ECR through ``omniret reason`` with ``reason.model.path=<run>/final``.
The target is the record's text after its opening ``<think>``, tokenized as plain text, then the
end-of-turn token generation stops on. A target longer than ``reason.max_new_tokens`` is cut there,
without the end token: the reasoner never generates past that limit (our choice). Prompt tokens
carry label -100 and add nothing to the loss.

Loss. The sum of -log p(token) over every target token of the global batch, divided by their number
(a token mean, as HF's causal-LM loss; a mean per sequence would weight short ECR up; our choice, the
paper does not say). Chunks of ``train.query_chunk_size`` examples are forwarded and backpropagated
one at a time against that shared normaliser, under DDP's ``no_sync``, and gradients are averaged
over ranks once: the gradient is exactly the global batch's. Logits are computed only at positions
that predict a target token, so the (batch, length, vocabulary) tensor of a real model is never built.

A reasoner has no retrieval evaluation: the worker skips evaluating this objective.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from omniret.data.schema import Pair, Side
from omniret.errors import ConfigError, MediaError
from omniret.losses.base import LossOutput
from omniret.models.backbone import core_model, forward_hidden, unwrap
from omniret.models.encoding import Encoded, PlainText
from omniret.reasoning.reasoner import Reasoner, Request
from omniret.reasoning.store import EcrLookup
from omniret.reasoning.templates import THINK_OPEN, ReasonTemplate, chosen_template
from omniret.training.gradcache import average_gradients

log = logging.getLogger(__name__)

IGNORE = -100  # label of a token the loss skips (torch's cross_entropy ignore_index default)


@dataclass
class SftExample(Encoded):
    """Prompt + target token ids (``input_ids``) and the prompt's length: its labels are -100."""

    prompt_tokens: int = 0

    @property
    def target_tokens(self) -> int:
        return len(self.input_ids) - self.prompt_tokens

    def labels(self) -> list[int]:
        return [IGNORE] * self.prompt_tokens + self.input_ids[self.prompt_tokens:]


@dataclass
class SftInputs:
    examples: list[SftExample] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    without_ecr: int = 0  # chosen sides that have no stored ECR

    @property
    def rows(self) -> int:
        return len(self.examples)

    @property
    def tokens(self) -> int:
        return sum(e.target_tokens for e in self.examples)


def ecr_target(text: str) -> str:
    """What the reasoner must write after its prompt: the ECR without the ``<think>`` the prompt opens."""
    text = text.strip()
    return (text[len(THINK_OPEN):] if text.startswith(THINK_OPEN) else text).lstrip()


def label_batch(examples: Sequence[SftExample], length: int) -> torch.Tensor:
    """(B, length) labels of right-padded examples: -100 on prompt and padding, the token id elsewhere."""
    out = torch.full((len(examples), length), IGNORE, dtype=torch.long)
    for row, example in enumerate(examples):
        labels = example.labels()
        out[row, :len(labels)] = torch.tensor(labels, dtype=torch.long)
    return out


def next_token_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions, targets): the (B, L) mask of positions whose next token is a target, and those
    targets in row-major order (position t predicts the token at t + 1)."""
    follows = labels[:, 1:]
    positions = torch.zeros_like(labels, dtype=torch.bool)
    positions[:, :-1] = follows != IGNORE
    return positions, follows[follows != IGNORE]


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of -log softmax(logits)[target] over rows ((N, V) logits, (N,) targets), in float32 or wider."""
    return F.cross_entropy(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits,
                           targets, reduction="sum")


class CausalLM(nn.Module):
    """``nn.Module`` view of the reasoner's next-token logits, so DDP can wrap it in training.

    forward(collated batch, positions) -> (N, V) logits at the ``positions`` mask only, through the
    backbone's own forward (position ids from the attention mask) and its LM head.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor], positions: torch.Tensor) -> torch.Tensor:
        hidden = forward_hidden(self.model, batch)
        return unwrap(self.model).lm_head(hidden[positions.to(hidden.device)])


def freeze_vision(model: nn.Module) -> int:
    """Stop gradients into the vision tower (and its merger, part of it); returns the parameters frozen."""
    visual = core_model(model).visual
    visual.requires_grad_(False)
    return sum(p.numel() for p in visual.parameters())


class SftExamples:
    """Builds :class:`SftExample` s of training sides from stored ECR, with the reasoner's prompts."""

    def __init__(self, reasoner: Reasoner, lookup: EcrLookup, template_setting: str, max_new_tokens: int):
        self.reasoner, self.lookup = reasoner, lookup
        self.template_setting, self.max_new_tokens = template_setting, max_new_tokens
        tok = reasoner.backbone.tokenizer
        self.plain = PlainText(tok)
        self.end_id = tok.convert_tokens_to_ids("<|im_end|>")

    def target_ids(self, text: str) -> list[int]:
        ids = [*self.plain(ecr_target(text)), self.end_id]
        return ids[:self.max_new_tokens]

    def example(self, side: Side, template: ReasonTemplate, name: str) -> SftExample | None:
        """None when the side has no stored ECR; MediaError when its media cannot be read."""
        text = self.lookup.get(side, template.name, name)
        if text is None:
            return None
        prompt = self.reasoner.encode(Request(side.to_item(name=name), template))
        return SftExample(input_ids=[*prompt.input_ids, *self.target_ids(text)], visuals=prompt.visuals,
                          prompt_tokens=len(prompt.input_ids))

    def sides(self, pair: Pair, which: str, negatives: int) -> list[tuple[Side, str]]:
        name = pair.id or pair.dataset
        out = [(pair.query, f"{name} query")] if which in ("query", "both") else []
        if which in ("target", "both"):
            out += [(s, f"{name} positive {i}") for i, s in enumerate(pair.positives)]
            out += [(s, f"{name} negative {i}") for i, s in enumerate(pair.negatives[:negatives])]
        return out

    def encode(self, pairs: Sequence[Pair], which: str, negatives: int, cache=None) -> SftInputs:
        out = SftInputs()
        for pair in pairs:
            template = chosen_template(self.template_setting, pair.task)
            got = 0
            try:
                for side, name in self.sides(pair, which, negatives):
                    example = self._cached(side, template, name, cache)
                    if example is None:
                        out.without_ecr += 1
                        continue
                    out.examples.append(example)
                    got += 1
            except (MediaError, OSError, ValueError) as exc:
                out.dropped.append(f"{pair.id or pair.dataset}: {exc}")
                log.warning("training pair %s left out of the step: %s", pair.id or pair.dataset, exc)
                continue
            if not got:
                out.dropped.append(f"{pair.id or pair.dataset}: no stored ECR for its sides")
        return out

    def _cached(self, side: Side, template: ReasonTemplate, name: str, cache) -> SftExample | None:
        if cache is None:
            return self.example(side, template, name)
        key = f"sft\x00{template.name}\x00{side.key()}"
        if key in cache.items:
            return cache.get(key, lambda: None)
        example = self.example(side, template, name)
        return cache.get(key, lambda: example) if example is not None else None


def _sum_over_ranks(value: int, device: torch.device) -> int:
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return value
    total = torch.tensor([value], dtype=torch.long, device=device)  # NCCL reduces device tensors only
    dist.all_reduce(total)
    return int(total)


class ReasonSftStep:
    """:class:`~omniret.training.steps.TrainStep` of reasoner SFT on the worker's model (``reason.model``)."""

    def __init__(self, worker):
        cfg = worker.cfg
        r = cfg.reason
        if cfg.train.curriculum != "none" or cfg.train.batching != "random":
            raise ConfigError("reason_sft trains on random batches: train.curriculum=none, train.batching=random")
        if not r.sft_from:
            raise ConfigError("train.objective=reason_sft needs reason.sft_from (ECR files, e.g. a teacher's)")
        try:
            lookup = EcrLookup(r.sft_from, reasoner=r.sft_reasoner)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if not len(lookup):
            raise ConfigError(f"reason.sft_from {r.sft_from} holds no ECR record"
                              + (f" of reasoner {r.sft_reasoner!r}" if r.sft_reasoner else ""))
        self.cfg, self.cache, self.autocast, self.world = cfg, worker.cache, worker.autocast, worker.world
        if r.sft_freeze_vision:
            log.info("reason_sft: vision tower frozen (%d parameters)", freeze_vision(worker.model))
        self.reasoner = Reasoner(worker.backbone, r, cfg.media)
        self.examples = SftExamples(self.reasoner, lookup, r.template, r.max_new_tokens)
        self.collate = self.reasoner.encoder(chosen_template(r.template, "")).collate
        self.net = worker.ctx.prepare_model(CausalLM(worker.model))
        self.loss = nn.Module()  # nothing learnable beside the model

    def inputs(self, pairs: Sequence[Pair]) -> SftInputs:
        return self.examples.encode(pairs, self.cfg.reason.sides, self.cfg.train.negatives, self.cache)

    def run(self, inputs: SftInputs, step: int) -> LossOutput:
        device = next(self.net.parameters()).device
        tokens = _sum_over_ranks(inputs.tokens, device)
        # each rank's share of sum/N, times the world size: averaging gradients over ranks gives sum/N's
        scale = self.world / max(tokens, 1)
        chunk = self.cfg.train.query_chunk_size
        cast = (torch.autocast(device_type=device.type, dtype=self.autocast) if self.autocast
                else contextlib.nullcontext())
        total = torch.zeros((), dtype=torch.float64)
        with self.net.no_sync() if hasattr(self.net, "no_sync") else contextlib.nullcontext():
            for start in range(0, inputs.rows, chunk):
                examples = inputs.examples[start:start + chunk]
                batch = self.collate(examples, padding_side="right")
                positions, targets = next_token_targets(label_batch(examples, batch["input_ids"].shape[1]))
                with cast:
                    logits = self.net(batch, positions)
                nll = token_nll(logits, targets.to(logits.device))
                (nll * scale).backward()
                total += nll.detach().double().cpu()
        if hasattr(self.net, "no_sync"):
            average_gradients(self.net)
        loss = (total * scale).float()
        return LossOutput(loss, {"ecr_tokens": float(tokens), "examples": float(inputs.rows),
                                 "without_ecr": float(inputs.without_ecr)})

    def metrics(self, inputs: SftInputs, out: LossOutput) -> dict[str, float]:
        return dict(out.metrics)

    def eval_models(self) -> dict[str, Any]:
        return {}

"""UME-R1's GRPO step (``train.objective: ume_grpo``, METHODS §5.3), with MMEmb-R1's adaptive reasoning
(``grpo.adaptive``, ``grpo.think_cost``; :mod:`omniret.training.rl.adaptive`).

One step, on every rank, for this rank's share of the batch:

1. rollouts: the policy itself samples G completions for each query and G for each positive target
   (transformers ``generate``, temperature ``grpo.temperature``, at most ``grpo.max_completion_length``
   tokens), G consecutive rows per pair
   (:meth:`omniret.models.generative.GenerativeEmbedder.generate`, which also reads each completion's
   generative embedding at its last ``<gen_emb>``, or the documented fallback when it has none);
2. the embeddings and completion texts of every rank are gathered; rewards over the *gathered* group:
   format reward + rank x gap of each query completion against all target completions and vice versa
   (:mod:`omniret.training.rl.rewards`), minus the reasoning cost in adaptive mode; group-normalised
   advantages; each rank keeps its own rows;
3. one forward of the policy (DDP-wrapped, with grad) over prompt + completion per side gives the
   completion tokens' log-probabilities; the frozen reference's come from a forward without grad
   (:class:`~omniret.training.rl.policy.Reference`);
4. loss (:func:`omniret.losses.grpo.grpo_loss` per side, then ``(query + target) / 2``), backward under
   ``no_sync`` and one gradient average over ranks.

Old-policy log-probabilities: every batch is used for exactly one update (UME-R1's ``num_iterations`` is 1),
so the policy that sampled the completions *is* the policy being trained: ``old_logp`` is the current
log-probability detached, the ratio is exactly 1 and the clip never binds, but the gradient of
``ratio * A`` is ``A * grad(logp)``: the policy gradient flows through the ratio. Several updates per
rollout batch are not supported.

Why not TRL's ``GRPOTrainer``: its reward functions receive the prompts and decoded completions of the
process's own batch, while this reward needs the generative *embeddings* of the sampled sequences (hidden
states at ``<gen_emb>``) of the target completions and of every worker's completions; and UME-R1's two-sided
loss (queries and targets both sampled and both trained) is not a GRPOTrainer objective. The released
UME-R1 code forks the trainer for these reasons. GRPOTrainer also brings its own accelerate loop, which
would replace the Ray Train worker's checkpoints, resume and logging. So the step is written here on the
tested pure pieces.
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
from omniret.losses.base import LossOutput
from omniret.losses.grpo import GRPOLossOutput, grpo_loss, ume_r1_loss
from omniret.models.gen_tokens import DISC_EMB, GEN_EMB
from omniret.models.generative import GenerativeEmbedder, has_embedding_tokens, pad_completions
from omniret.training.gradcache import average_gradients
from omniret.training.inputs import training_side
from omniret.training.rl import adaptive
from omniret.training.rl.policy import PolicyForward, Reference, gather_rows
from omniret.training.rl.rewards import embedding_reward, format_reward, group_advantages

log = logging.getLogger(__name__)


@dataclass
class Rollout:
    """G sampled completions of each prompt of one side, G consecutive rows per prompt."""

    batch: dict[str, torch.Tensor]  # prompt (left-padded, prompt_length columns) + completion: (R, P + T)
    prompt_length: int
    completion_ids: torch.Tensor  # (R, T), padding after the stop token
    completion_mask: torch.Tensor  # (R, T): 1 for completion tokens up to and including the stop token
    texts: list[str]  # decoded with special tokens kept
    embeddings: torch.Tensor  # (R, H) generative embeddings of the sampling policy (L2-normalised, no grad)
    found: torch.Tensor  # (R,) bool: the completion has a <gen_emb> (False: the fallback read-out)

    @property
    def rows(self) -> int:
        return self.completion_ids.shape[0]


@dataclass
class GrpoInputs:
    queries: list[Side] = field(default_factory=list)
    targets: list[Side] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.queries)


@dataclass
class SideScores:
    rewards: torch.Tensor  # (R_all,) gathered
    format: torch.Tensor
    embedding: torch.Tensor
    think_tokens: torch.Tensor


def score_sides(q_texts: Sequence[str], q_emb: torch.Tensor, t_texts: Sequence[str], t_emb: torch.Tensor,
                group_size: int, think_cost: float = 0.0, count=None) -> tuple[SideScores, SideScores]:
    """Rewards of the gathered query and target completions (METHODS §5.3), minus MMEmb-R1's reasoning cost;
    ``count`` tokenises a reasoning (needed for the cost and the reasoning metrics)."""
    sims = q_emb.detach().double() @ t_emb.detach().double().T  # float64: advantages divide by small stds
    out = []
    for texts, s in ((q_texts, sims), (t_texts, sims.T)):
        fmt = format_reward(list(texts)).double()
        emb = embedding_reward(s, group_size).cpu()
        tokens = (adaptive.reasoning_tokens(texts, count) if count is not None
                  else torch.zeros(len(texts)))
        rewards = fmt + emb + (adaptive.reasoning_cost(tokens, think_cost) if think_cost else 0.0)
        out.append(SideScores(rewards, fmt, emb, tokens))
    return out[0], out[1]


class GrpoStep:
    """:class:`~omniret.training.steps.TrainStep` of UME-R1's GRPO on the worker's model."""

    def __init__(self, worker):
        cfg = worker.cfg
        t, g = cfg.train, cfg.grpo
        if t.mode not in ("lora", "full"):
            raise ConfigError("train.objective=ume_grpo trains the policy: train.mode lora or full")
        if t.curriculum != "none":
            raise ConfigError("train.curriculum applies to contrastive training; a GRPO stage uses none")
        self.cfg, self.g, self.device, self.world, self.rank = cfg, g, worker.device, worker.world, worker.rank
        self.backbone, self.model, self.autocast = worker.backbone, worker.model, worker.autocast
        tok = worker.backbone.tokenizer
        if not has_embedding_tokens(tok):
            raise ConfigError(f"{worker.backbone.path} has no {DISC_EMB} / {GEN_EMB} tokens: start GRPO from a "
                              "checkpoint that has them (the output of a ume_sft stage, train.init_from)")
        self.tokenizer = tok
        self.net = worker.ctx.prepare_model(PolicyForward(worker.model))
        self.loss = torch.nn.Module()  # no loss parameters (the worker's optimizer group stays empty)
        self.reference = (Reference(worker.model, t.mode, lambda: self._load_start(worker)) if g.beta else None)
        self._generator = None

    # ---- TrainStep --------------------------------------------------------------------------
    def inputs(self, pairs: Sequence[Pair]) -> GrpoInputs:
        """This rank's pairs; a pair whose query or positive cannot be encoded is left out with its reason."""
        instructions = self.cfg.train.instructions
        out = GrpoInputs()
        for pair in pairs:
            name = pair.id or pair.dataset or "pair"
            query, target = training_side(pair.query, instructions), training_side(pair.positives[0], instructions)
            try:
                self.generator.prepare([query.to_item(name=f"{name} query"), target.to_item(name=f"{name} positive")])
            except (MediaError, OSError, ValueError) as exc:
                out.dropped.append(f"{name}: {exc}")
                log.warning("training pair %s left out of the step: %s", name, exc)
                continue
            out.queries.append(query)
            out.targets.append(target)
            out.names.append(name)
        return out

    def run(self, inputs: GrpoInputs, step: int) -> LossOutput:
        # Sampling seeds from (seed, step, rank, side): a step redone after a resume samples the same rollouts.
        seed = (self.cfg.train.seed * 1_000_003 + step) * 1009 + 2 * self.rank
        queries = self.rollout(inputs.queries, [f"{n} query" for n in inputs.names], seed)
        targets = self.rollout(inputs.targets, [f"{n} positive" for n in inputs.names], seed + 1)
        return self.step_on(queries, targets)

    def metrics(self, inputs: GrpoInputs, out: LossOutput) -> dict[str, float]:
        return dict(out.metrics)

    def eval_models(self) -> dict[str, Any]:
        """The discriminative read-out of the policy, as an embedder for the in-training evaluation (the
        generative and auto modes are scored by ``omniret eval`` with ``eval.ume_modes``)."""
        from omniret.models.generative import UmeModeEmbedder

        return {"embedder": UmeModeEmbedder(self.generator, "disc", self.cfg.ume.max_new_tokens)}

    def save_files(self, folder) -> None:
        """Checkpoints carry the tokenizer with the embedding tokens."""
        self.tokenizer.save_pretrained(str(folder))

    # ---- rollouts ---------------------------------------------------------------------------
    @property
    def generator(self):
        if self._generator is None:
            cls = ThinkFirst if self.g.adaptive else GenerativeEmbedder
            self._generator = cls(self.backbone, self.cfg.media, self.cfg.model.max_length,
                                  batch_size=self.cfg.train.query_chunk_size)
        return self._generator

    def rollout(self, sides: Sequence[Side], names: Sequence[str], seed: int) -> Rollout:
        """G sampled completions per side (seeded: a resumed step samples what the first attempt sampled)."""
        g, gen = self.g, self.generator
        encoded = gen.prepare([s.to_item(name=n) for s, n in zip(sides, names, strict=True)])
        out = gen.generate_prepared(encoded, max_new_tokens=g.max_completion_length, sample=True, seed=seed,
                                    num_return_sequences=g.num_generations, temperature=g.temperature, top_p=g.top_p)
        rows = [e for e in encoded for _ in range(g.num_generations)]
        ids, mask = pad_completions(out.completion_ids, gen.pad_id)
        prompts = {k: v.to(self.device) for k, v in gen.collate(rows).items()}
        batch, length, mask = gen.completion_batch(prompts, ids.to(self.device), mask.to(self.device))
        return Rollout(batch, length, ids.to(self.device), mask, out.texts, torch.from_numpy(out.embeddings),
                       torch.from_numpy(out.found))

    # ---- the loss of one step on given rollouts ------------------------------------------------
    def step_on(self, queries: Rollout, targets: Rollout) -> LossOutput:
        """Rewards, advantages, loss and backward of one step on this rank's rollouts (gradients averaged)."""
        g, G = self.g, self.g.num_generations
        for side, r in (("query", queries), ("target", targets)):
            if r.rows % G:
                raise ValueError(f"{side} rollout has {r.rows} rows, not whole groups of {G}")
        count = (lambda text: len(self.tokenizer(text, add_special_tokens=False)["input_ids"])) \
            if (g.adaptive or g.think_cost) else None
        # Rewards over every rank's completions (the sampling policy's embeddings: no gradient flows here).
        q_emb, q_start = gather_rows(queries.embeddings.cpu(), queries.rows)
        t_emb, t_start = gather_rows(targets.embeddings.cpu(), targets.rows)
        q_texts, _ = gather_rows(queries.texts, queries.rows)
        t_texts, _ = gather_rows(targets.texts, targets.rows)
        q_scores, t_scores = score_sides(q_texts, q_emb, t_texts, t_emb, G, g.think_cost, count)
        cast = (torch.autocast(device_type=self.device.type, dtype=self.autocast) if self.autocast
                else contextlib.nullcontext())
        sync = self.net.no_sync() if hasattr(self.net, "no_sync") else contextlib.nullcontext()
        outs: list[GRPOLossOutput] = []
        with sync:
            for r, scores, start in ((queries, q_scores, q_start), (targets, t_scores, t_start)):
                with cast:
                    logp = self.net(r.batch, r.prompt_length, r.completion_ids)
                adv = group_advantages(scores.rewards, G)[start:start + r.rows].to(logp.device)
                ref = None
                if self.reference is not None:
                    with cast:
                        ref = self.reference.logprobs(r.batch, r.prompt_length, r.completion_ids).to(logp.device)
                # One update per rollout batch: the sampling policy is the current one (module docstring).
                outs.append(grpo_loss(logp, logp.detach(), ref, adv, r.completion_mask.to(logp.device),
                                      g.max_completion_length, g.eps_low, g.eps_high, g.beta))
            loss = ume_r1_loss(outs[0], outs[1])
            loss.backward()
        if hasattr(self.net, "no_sync"):
            average_gradients(self.net)
        found = torch.cat([queries.found, targets.found]).float()
        metrics = {"reward_query": float(q_scores.rewards.mean()), "reward_target": float(t_scores.rewards.mean()),
                   "format_reward": float(torch.cat([q_scores.format, t_scores.format]).mean()),
                   "embedding_reward": float(torch.cat([q_scores.embedding, t_scores.embedding]).mean()),
                   "gen_emb_found": float(found.mean()),
                   "completion_tokens": float(torch.cat([queries.completion_mask.sum(1),
                                                         targets.completion_mask.sum(1)]).float().mean()),
                   "kl": float((outs[0].kl + outs[1].kl) / 2),
                   "clip_fraction": float((outs[0].clip_fraction + outs[1].clip_fraction) / 2)}
        if count is not None:
            texts = [*q_texts, *t_texts]
            metrics["share_thinking"] = sum(adaptive.thinks(x) for x in texts) / len(texts)
            metrics["think_tokens"] = float(torch.cat([q_scores.think_tokens, t_scores.think_tokens]).mean())
        return LossOutput(loss.detach().cpu(), metrics)

    # ---- helpers -------------------------------------------------------------------------------
    def _load_start(self, worker):
        """The stage's starting model (the reference of full training), loaded again and frozen."""
        from omniret.models.backbone import load_backbone
        from omniret.training.loop import trained_model

        model_cfg = trained_model(self.cfg).model_copy(update={"path": str(worker.base_dir), "adapter": None,
                                                               "device": str(self.device)})
        param = next(worker.model.parameters())
        return load_backbone(model_cfg).model.to(param.dtype)  # the policy's master dtype



class ThinkFirst(GenerativeEmbedder):
    """Rollout generation whose completions open with ``<think>``: MMEmb-R1's decision is the next token."""

    def _generate_kwargs(self, sample: bool, temperature: float, top_p: float) -> dict:
        from transformers import LogitsProcessorList

        opening = self.encoder.tokenize(adaptive.THINK_OPEN)
        return {**super()._generate_kwargs(sample, temperature, top_p),
                "logits_processor": LogitsProcessorList([adaptive.OpeningProcessor(opening)])}

"""The training loop of one worker: ``train_loop_per_worker`` for Ray Train, and :class:`TrainWorker`.

Per worker: read and mix the pairs, build the deterministic batch sampler (identical on every rank),
load the backbone (LoRA adapters, or every parameter for the tiny random model), wrap the embedding
module for DDP, then per step take this rank's share of the global batch, encode it on the CPU,
run a GradCache step (or a plain full-batch step) whose loss sees every rank's targets, average the
gradients, clip, and step AdamW and the warmup-cosine schedule. The loss's temperatures are in
their own parameter group; their gradients are averaged across ranks too.

Checkpoints (every ``train.checkpoint_every`` steps and at the end) carry the model, optimizer,
scheduler, temperatures, sampler state and every rank's RNG; a restarted worker group resumes from
the latest one with the same step count and sampler position. Rank 0 logs every step to
``metrics.csv`` (loss, temperatures, effective negatives, pairs/s, peak memory, the batch's
fingerprint), evaluates every ``train.eval_every`` steps and at the end, and writes the stage's
output (``final/``) and the curves (``curves.png``).

The objective's own part of a step (encoding, forward, loss, backward, its metrics and the models
its evaluation uses) is a :class:`~omniret.training.steps.TrainStep`: :class:`ContrastiveStep` here,
the reranker's in :mod:`omniret.training.rerank` (``train.objective``).

Inputs are decoded by the worker itself rather than fed through Ray Data: batches are homogeneous,
drawn by a sampler whose probabilities can depend on the model (the GVE probe at each epoch start)
and which must resume mid-epoch exactly; a streaming dataset can neither follow the probe nor seek.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from omniret.config import ModelConfig, OmniretConfig
from omniret.data.mixing import load_mixture
from omniret.data.schema import TASK_GROUPS, Pair
from omniret.losses import ContrastiveLoss, LossOutput, TaskTemperature, build_loss
from omniret.losses.temperature import LearnableTemperature
from omniret.models.backbone import Backbone, checkpoint_path, load_backbone, unwrap
from omniret.models.embedder import Embedder, EmbeddingModel
from omniret.models.head import EmbeddingHead
from omniret.models.pooling import save_pooling
from omniret.progress import Pace
from omniret.reasoning.attach import attach_to_pairs
from omniret.training import checkpoint as ckpt
from omniret.training.context import checkpoint_name
from omniret.training.gradcache import GradCache, average_gradients
from omniret.training.inputs import EncodeCache, StepInputs, encode_pairs, shard, training_side
from omniret.training.logbook import EVAL_CSV, METRICS_CSV, CsvLog, console_line, record_event
from omniret.training.optim import build_optimizer, warmup_cosine
from omniret.training.sampling import (
    BatchSampler,
    alignment_scores,
    probe_sets,
    pyramid_due,
    pyramid_interval,
    pyramid_probabilities,
    sigma_at_step,
)
from omniret.training.steps import build_step

log = logging.getLogger(__name__)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry: ``config = {"cfg": OmniretConfig.model_dump(), "run_dir": str}``."""
    from omniret.training.context import RayTrainContext

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = OmniretConfig.model_validate(config["cfg"])
    TrainWorker(cfg, RayTrainContext(), config["run_dir"]).run()


def build_training_loss(cfg: OmniretConfig, total_steps: int) -> ContrastiveLoss:
    """The configured loss; ``total_steps`` reaches losses with a step-based curriculum."""
    from omniret.losses.registry import LOSSES, _accepted_kwargs

    options = {"temperature": cfg.loss.temperature, **cfg.loss.options}
    cls = LOSSES.get(cfg.loss.name.lower())
    if cls is not None and "total_steps" in _accepted_kwargs(cls):
        options.setdefault("total_steps", total_steps)
    return build_loss(cfg.loss.name, matryoshka_dims=cfg.loss.matryoshka_dims, **options)


def full_batch_step(net: nn.Module, loss: nn.Module, collate, queries, targets, negatives,
                    autocast_dtype: torch.dtype | None = None, **loss_kwargs: Any) -> LossOutput:
    """Forward the whole batch with autograd, then backward (the no-GradCache baseline).

    Runs under ``no_sync`` and averages gradients once afterwards, exactly as GradCache does, so the
    two paths differ only in memory and time.
    """
    device = next(net.parameters()).device.type
    cast = torch.autocast(device_type=device, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    sync = net.no_sync() if hasattr(net, "no_sync") else contextlib.nullcontext()
    with sync:
        with cast:
            q, t = net(collate(queries)).float(), net(collate(targets)).float()
            n = net(collate(negatives)).float().view(len(queries), -1, q.shape[-1]) if negatives else None
        out = loss(q, t, n, **loss_kwargs)
        out.loss.backward()
    if hasattr(net, "no_sync"):
        average_gradients(net)
    return LossOutput(out.loss.detach(), out.metrics)


def enable_checkpointing(model: nn.Module) -> None:
    """Non-reentrant activation checkpointing of the decoder layers (works with LoRA and GradCache replay)."""
    hf = unwrap(model)
    kwargs = {"use_reentrant": False}
    if hasattr(hf, "activation_checkpointing_enable"):  # transformers >= 5.x name
        hf.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _metric(metrics: dict[str, float], name: str) -> float:
    """A loss metric by name; for Matryoshka losses, that of the widest slice (``dim<D>/name``)."""
    if name in metrics:
        return metrics[name]
    sliced = sorted((int(k.split("/")[0][3:]), v) for k, v in metrics.items()
                    if k.startswith("dim") and k.endswith(f"/{name}"))
    return sliced[-1][1] if sliced else float("nan")


def _world() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather_objects(value: Any) -> list[Any]:
    if not _world():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def _mean_over_ranks(value: torch.Tensor) -> float:
    """The mean of a per-rank loss over ranks: the full-batch loss (losses/base.py's convention)."""
    if not _world():
        return float(value)
    total = value.detach().double().reshape(1).clone()
    dist.all_reduce(total)
    return float(total) / dist.get_world_size()


def _broadcast(value: Any) -> Any:
    if not _world():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _barrier() -> None:
    if _world():
        dist.barrier()


class ContrastiveStep:
    """:class:`~omniret.training.steps.TrainStep` of contrastive training: a GradCache step (or a plain
    full-batch step) of the configured loss over queries, positives and explicit hard negatives."""

    def __init__(self, worker):
        t, cfg = worker.cfg.train, worker.cfg
        self.cfg, self.device, self.world, self.cache = cfg, worker.device, worker.world, worker.cache
        self.autocast = worker.autocast
        self.embedder = Embedder(worker.backbone, cfg.media, cfg.embed.model_copy(update={"progress": False}),
                                 cfg.model.template, cfg.model.max_length)
        self.encoder = self.embedder.encoder
        self.net = worker.ctx.prepare_model(EmbeddingModel(worker.model, worker.backbone.pooling,
                                                           worker.backbone.head))
        self.loss = build_training_loss(cfg, worker.total_steps).to(self.device)
        self.gradcache = GradCache(self.net, self.loss, self.encoder.collate, t.query_chunk_size,
                                   t.target_chunk_size, self.autocast)

    def inputs(self, pairs: list[Pair]) -> StepInputs:
        t = self.cfg.train
        return encode_pairs(pairs, self.encoder, t.negatives, t.instructions, self.cache)

    def run(self, inputs: StepInputs, step: int) -> LossOutput:
        keys = _gather_objects(inputs.target_keys if self._mask_duplicates else None)
        kwargs = self._loss_kwargs(inputs, [k for r in keys for k in (r or [])], step)
        step_fn = self.gradcache.step if self.cfg.train.gradcache else self._plain_step
        out = step_fn(inputs.queries, inputs.targets, inputs.negatives or None, **kwargs)
        if self._learnable_temperature and self.world > 1:
            average_gradients(self.loss)
        return out

    def metrics(self, inputs: StepInputs, out: LossOutput) -> dict[str, float]:
        return {**{key: _metric(out.metrics, key) for key in ("temperature", "num_negatives", "fn_masked_per_row",
                                                               "rows_without_negatives", "pos_sim", "neg_sim")},
                "hard_negatives": inputs.negatives_per_query, "filled_negatives": inputs.filled}

    def eval_models(self) -> dict[str, Any]:
        return {"embedder": self.embedder}

    def _plain_step(self, queries, targets, negatives, **kwargs) -> LossOutput:
        return full_batch_step(self.net, self.loss, self.encoder.collate, queries, targets, negatives,
                               self.autocast, **kwargs)

    @property
    def _inner_loss(self) -> nn.Module:
        return getattr(self.loss, "inner", self.loss)

    @property
    def _mask_duplicates(self) -> bool:
        return self.cfg.loss.mask_duplicates and getattr(self._inner_loss, "supports_positive_mask", False)

    @property
    def _learnable_temperature(self) -> bool:
        return any(p.requires_grad for p in self.loss.parameters())

    def _loss_kwargs(self, inputs: StepInputs, global_keys: list[str], step: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"task_ids": torch.tensor(inputs.task_ids, device=self.device), "step": step,
                                  "q_modality": torch.tensor(inputs.query_modality, device=self.device),
                                  "t_modality": torch.tensor(inputs.target_modality, device=self.device)}
        if self._mask_duplicates:
            keys = np.array(global_keys, dtype=object)
            kwargs["positive_mask"] = torch.from_numpy(keys[:, None] == keys[None, :]).to(self.device)
        if getattr(self._inner_loss, "supports_teacher_scores", False):
            if len(inputs.teacher_scores) != inputs.rows:
                raise ValueError(f"loss {self.cfg.loss.name!r} needs teacher_scores on every pair; score the "
                                 "pairs with the reranker first (omniret score-pairs)")
            kwargs["teacher_scores"] = torch.tensor(inputs.teacher_scores, dtype=torch.float32, device=self.device)
        return kwargs


def trained_model(cfg: OmniretConfig) -> ModelConfig:
    """The model section a stage trains: ``rerank.model`` for the reranker, else ``model``."""
    return cfg.rerank.model if cfg.train.objective == "rerank" else cfg.model


class TrainWorker:
    """One rank's training run; ``ctx`` is a :class:`~omniret.training.context.LocalContext` or
    :class:`~omniret.training.context.RayTrainContext`."""

    def __init__(self, cfg: OmniretConfig, ctx, run_dir: str | Path):
        self.cfg, self.ctx, self.run_dir = cfg, ctx, Path(run_dir)
        self.rank, self.world = ctx.rank, ctx.world_size
        self.step = 0
        self.last_checkpoint_step: int | None = None
        self._eval_sets: dict[int | None, list] = {}
        self.metrics_log = CsvLog(self.run_dir / METRICS_CSV) if self.rank == 0 else None
        self.eval_log = CsvLog(self.run_dir / EVAL_CSV) if self.rank == 0 else None

    # ---- setup -------------------------------------------------------------------------------
    def setup(self) -> None:
        t = self.cfg.train
        self.device = self.ctx.device
        if self.device.type == "cpu":
            torch.set_num_threads(t.torch_threads or max(1, int(t.cpus_per_worker)))
        mixture, read = load_mixture(self.cfg.data)
        attach_to_pairs(self.cfg, read.pairs)  # TTE_t: ECR after the input (model.reasoning)
        if read.problems and self.rank == 0:
            record_event(self.run_dir, "skipped_rows", count=len(read.problems),
                         first=[str(p) for p in read.problems[:10]])
        communities = None
        if t.batching == "b3":
            from omniret.training.b3 import communities_path, load_communities

            communities = load_communities(communities_path(self.cfg), mixture.groups)
        self.sampler = BatchSampler(mixture, t.batch_size, seed=t.seed, homogeneous=t.homogeneous,
                                    steps_per_epoch=t.steps_per_epoch, communities=communities)
        self.total_steps = t.max_steps or t.epochs * self.sampler.steps_per_epoch
        self.total_epochs = math.ceil(self.total_steps / self.sampler.steps_per_epoch)
        with self.ctx.checkpoint() as resume:
            self._build(resume)

    def _build(self, resume: Path | None) -> None:
        t = self.cfg.train
        torch.manual_seed(t.seed)  # identical initial adapters on every rank (DDP also broadcasts them)
        self.backbone, self.base_dir = self._load_model(resume)
        self.model = self.backbone.model
        self.cache = EncodeCache(t.cache_mb) if t.cache_mb else None
        self.autocast = self._autocast_dtype()
        self.objective = build_step(self)  # the objective's per-step part (omniret.training.steps)
        self.net, self.loss = self.objective.net, self.objective.loss
        self.optimizer = build_optimizer(self.net, self.loss, t.lr, t.weight_decay, t.temperature_lr)
        self.scheduler = warmup_cosine(self.optimizer, self.total_steps, round(t.warmup_ratio * self.total_steps),
                                       t.min_lr_ratio)
        seed = t.seed + 1000 * self.rank
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        self.resumed_from = None
        if resume is not None:
            state = ckpt.load_training_state(resume, self.optimizer, self.scheduler, self.loss)
            self.step = state["step"]
            self.sampler.load_state_dict(state["sampler"])
            ckpt.load_rng(resume, self.rank)
            self.last_checkpoint_step = self.step
            self.resumed_from = str(resume)
        self._set_training(True)

    def _set_training(self, flag: bool) -> None:
        """Train/eval mode of the model and of its embedding head (a module of its own)."""
        self.model.train(flag)
        if self.backbone.head is not None:
            self.backbone.head.train(flag)

    def _load_model(self, resume: Path | None) -> tuple[Backbone, Path]:
        t, model_cfg = self.cfg.train, trained_model(self.cfg).model_copy()
        model_cfg.device = str(self.device)
        if t.mode in ("full", "head") and model_cfg.dtype == "auto":
            # full and head training keep fp32 master weights (the head is a copy of backbone layers,
            # in the backbone's dtype); bf16 only in autocast
            model_cfg.dtype = "float32"
        if t.mode == "head":
            if t.objective != "contrastive":
                raise ValueError("train.mode=head trains an embedding head: it needs train.objective=contrastive")
            if model_cfg.adapter:
                raise ValueError("train.mode=head freezes a full checkpoint; export the adapter into one first "
                                 "(a stage's final/ folder) and give it as model.path")
            if resume is not None:
                model_cfg.head = str(resume)  # the head trained so far (the backbone is unchanged)
        adapter, model_cfg.adapter = model_cfg.adapter, None
        base_dir = checkpoint_path(model_cfg).resolve()
        if t.mode == "full" and resume is not None:
            model_cfg.path = str(resume)
        backbone = load_backbone(model_cfg)
        if t.mode != "head" and backbone.head is not None:
            # The backbone would train under a frozen head that its saved checkpoint does not carry.
            raise ValueError(f"{backbone.path} has an embedding head: train.mode=head continues it; lora and full "
                             "training start from a checkpoint without one")
        model = backbone.model
        from omniret.models import adapters

        if adapter:  # a starting adapter is folded into the base; training adds a fresh one
            model = adapters.merge(adapters.load_adapter(model, adapter))
        if t.mode == "lora":
            model = (adapters.load_adapter(model, resume, trainable=True) if resume is not None
                     else adapters.attach_lora(model, self.cfg.lora))
        elif t.mode == "head":  # TTE_u: the backbone is frozen, the head (saved one, or a new copy) trains
            model.requires_grad_(False)
            head = backbone.head or EmbeddingHead.from_backbone(model, model_cfg.head_layers)
            head.requires_grad_(True)
            backbone = dataclasses.replace(backbone, head=head.to(self.device))
        else:
            for param in model.parameters():
                param.requires_grad_(True)
        if t.gradient_checkpointing:
            enable_checkpointing(model)
        model.to(self.device)
        return dataclasses.replace(backbone, model=model), base_dir

    def _autocast_dtype(self) -> torch.dtype | None:
        precision = self.cfg.train.precision
        if precision == "bf16" or (precision == "auto" and self.device.type == "cuda"):
            return torch.bfloat16
        return None

    # ---- steps -------------------------------------------------------------------------------
    def begin_epoch(self) -> None:
        """Start an epoch, or take a pyramid decision (re-probe; sigma from the step) inside one."""
        t, epoch = self.cfg.train, self.sampler.state.epoch
        starting = self.sampler.needs_epoch_start
        if t.curriculum != "pyramid":
            self.sampler.begin_epoch()
            return
        decision = None
        if self.rank == 0:  # one prober decides; every rank then uses exactly the same probabilities
            scores = alignment_scores(probe_sets(self.sampler, t.probe_pairs, epoch), self._similarity)
            sigma = sigma_at_step(self.step, self.total_steps, self._pyramid_interval, t.sigma_min, t.sigma_max)
            decision = (pyramid_probabilities(self.sampler.base_probabilities, scores, sigma), scores, sigma)
            record_event(self.run_dir, "curriculum", epoch=epoch, step=self.step, sigma=sigma, alignment=scores,
                         probabilities=decision[0])
            log.info("step %d (epoch %d): sigma %.2f, probabilities %s", self.step, epoch, sigma,
                     {k: round(v, 3) for k, v in decision[0].items()})
        probs, scores, sigma = _broadcast(decision)
        if starting:
            self.sampler.begin_epoch(probs, alignment=scores, sigma=sigma)
        else:
            self.sampler.update_probabilities(probs, alignment=scores, sigma=sigma)
        self.sampler.state.decided_step = self.step

    @property
    def _pyramid_interval(self) -> int:
        t = self.cfg.train
        return pyramid_interval(self.total_steps, self.sampler.steps_per_epoch, t.probe_every)

    def _curriculum_due(self) -> bool:
        return (self.cfg.train.curriculum == "pyramid"
                and pyramid_due(self.step, self._pyramid_interval, self.sampler.state.decided_step))

    def _similarity(self, pairs: list[Pair]) -> list[float]:
        """Cosine of each pair's query and first positive under the current model."""
        instructions = self.cfg.train.instructions
        items = [training_side(s, instructions).to_item() for p in pairs for s in (p.query, p.positives[0])]
        with self.evaluating():
            vectors, kept, _ = self.objective.embedder.encode_lenient(items)
        got = dict(zip(kept, vectors, strict=True))
        return [float(got[2 * i] @ got[2 * i + 1]) for i in range(len(pairs)) if 2 * i in got and 2 * i + 1 in got]

    @contextlib.contextmanager
    def evaluating(self):
        self._set_training(False)
        try:
            yield
        finally:
            self._set_training(True)

    def train_step(self) -> dict[str, Any] | None:
        """Draw, encode and train on one batch; returns the step's metrics (None when it was skipped)."""
        t = self.cfg.train
        started = time.perf_counter()
        if self.sampler.needs_epoch_start or self._curriculum_due():
            self.begin_epoch()
        batch = self.sampler.next()
        pairs = self.sampler.pairs_of(batch)
        inputs = self.objective.inputs([pairs[i] for i in shard(range(len(pairs)), self.rank, self.world)])
        counts = _gather_objects(inputs.rows)
        if min(counts) == 0:
            log.warning("step %d: batch %d of epoch %d skipped: a worker has no usable pair (%s)",
                        self.step + 1, batch.position, batch.epoch, "; ".join(inputs.dropped[:3]))
            return None
        out = self.objective.run(inputs, self.step)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        grad_norm = (float(torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)) if t.max_grad_norm
                     else float("nan"))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        elapsed = time.perf_counter() - started
        row = {"step": self.step, "epoch": batch.epoch, "group": batch.group, "batch": batch.fingerprint(),
               "pairs": sum(counts), "loss": _mean_over_ranks(out.loss), "lr": lr, "grad_norm": grad_norm,
               **self.objective.metrics(inputs, out), "dropped": len(inputs.dropped),
               "step_s": elapsed, "pairs_per_s": sum(counts) / elapsed,
               "peak_mem_mb": peak_memory_mb(self.device), **self.temperatures()}
        if row.get("rows_without_negatives", 0) > 0:  # their loss is 0: no gradient (docs/RECIPES.md, masking)
            log.warning("step %d: masking left %d of %d rows of rank %d without a negative (loss %.4g); see "
                        "docs/RECIPES.md on false-negative masking", self.step, row["rows_without_negatives"],
                        inputs.rows, self.rank, row["loss"])
        return row

    def temperatures(self) -> dict[str, float]:
        """Current value of every learnable temperature (per task for the task temperature)."""
        out = {}
        for module in self.loss.modules():
            if isinstance(module, TaskTemperature):
                for i, tau in enumerate(module.theta.detach().exp().tolist()):
                    out[f"tau_{TASK_GROUPS[i] if module.num_tasks == len(TASK_GROUPS) else i}"] = tau
            elif isinstance(module, LearnableTemperature):
                out["tau"] = float(module.theta.detach().exp())
        return out

    # ---- checkpoints, evaluation, output ------------------------------------------------------
    def save_checkpoint(self, metrics: dict[str, Any] | None = None) -> None:
        """Every rank writes its share into a temporary folder and reports it (a barrier)."""
        with tempfile.TemporaryDirectory(prefix="omniret-ckpt-") as tmp:
            folder = Path(tmp)
            if self.rank == 0:
                ckpt.save_model(folder, self.model, self.cfg.train.mode, self.base_dir, self.backbone.head)
                save_pooling(folder, self.backbone.pooling)  # the checkpoint embeds as it was trained
                if hasattr(self.objective, "save_files"):  # files of the objective's own (a grown tokenizer)
                    self.objective.save_files(folder)
                state = {"step": self.step, "total_steps": self.total_steps, "sampler": self.sampler.state_dict(),
                         "metrics": {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float, str))}}
                info = {"mode": self.cfg.train.mode, "base": str(self.base_dir), "step": self.step,
                        "template": self.cfg.model.template, "run": self.cfg.train.name}
                ckpt.save_training_state(folder, state=state, optimizer=self.optimizer, scheduler=self.scheduler,
                                         loss=self.loss, info=info)
            ckpt.save_rng(folder, self.rank)
            self.ctx.report({"step": self.step, **{k: v for k, v in (metrics or {}).items()
                                                   if isinstance(v, (int, float))}},
                            folder, checkpoint_name(self.step))
        self.last_checkpoint_step = self.step

    def embedder(self) -> Embedder:
        """An embedder on the in-training model (call inside :meth:`evaluating` for eval-mode outputs)."""
        return self.objective.embedder

    def evaluate(self, tag: str, max_queries: int | None) -> dict[str, Any] | None:
        """Rank 0 scores the current model on the evaluation sets; the others wait."""
        summary = None
        if self.rank == 0:
            from omniret.eval.mmeb import load_datasets
            from omniret.eval.report import write_report
            from omniret.eval.rerank import summary_columns
            from omniret.eval.runner import evaluate

            cfg = self.cfg.model_copy(deep=True)
            cfg.eval.max_queries = max_queries
            if max_queries not in self._eval_sets:
                self._eval_sets[max_queries], skipped = load_datasets(cfg.eval)
                for problem in skipped:
                    log.warning("evaluation set skipped: %s", problem)
            datasets = self._eval_sets[max_queries]
            if datasets:
                with self.evaluating():
                    report = evaluate(cfg, datasets, **self.objective.eval_models())
                report["step"] = self.step
                report["model"].update(id=f"{self.cfg.train.name} step {self.step}", path=str(self.run_dir),
                                       start=report["model"]["path"], tiny_random=False)
                write_report(report, self.run_dir / "eval" / tag)
                scores = {row["name"]: row["score"] for row in report["datasets"]}
                summary = {"step": self.step, "tag": tag, **{k: v for k, v in report["summary"].items()
                                                             if k in ("Overall", "Image", "Video", "VisDoc")},
                           **scores, **summary_columns(report)}
                self.eval_log.write(summary)
                log.info("evaluation at step %d (%s): Overall %.1f", self.step, tag, summary.get("Overall", math.nan))
            else:
                log.warning("no evaluation set found under %s", cfg.eval.root)
        _barrier()
        return summary

    def run(self) -> dict[str, Any]:
        """Train to ``total_steps`` (resuming if a checkpoint exists), then checkpoint, export and evaluate."""
        self.setup()
        t = self.cfg.train
        pids = _gather_objects(os.getpid())
        if self.rank == 0:
            record_event(self.run_dir, "resume" if self.resumed_from else "start", step=self.step,
                         checkpoint=self.resumed_from, world_size=self.world, total_steps=self.total_steps,
                         pids=pids, sampler=self.sampler.state_dict())
        last: dict[str, Any] = {}
        pace = Pace(self.total_steps)  # this run's ETA
        while self.step < self.total_steps:
            row = self.train_step()
            if row is None:
                continue
            last = row
            if self.rank == 0:
                self.metrics_log.write(row)
                if self.step % t.log_every == 0 or self.step == self.total_steps:
                    log.info("%s", console_line(row, self.total_steps, pace))
            if t.checkpoint_every and self.step % t.checkpoint_every == 0 and self.step < self.total_steps:
                self.save_checkpoint(row)
            if t.eval_every and self.step % t.eval_every == 0 and self.step < self.total_steps:
                self.evaluate(f"step_{self.step:06d}", t.eval_max_queries)
        if self.last_checkpoint_step != self.step:
            self.save_checkpoint(last)
        result: dict[str, Any] = {"step": self.step, **{k: v for k, v in last.items() if k in ("loss", "temperature")}}
        if t.eval_at_end:
            summary = self.evaluate("final", self.cfg.eval.max_queries)
            if summary:
                result.update({k: v for k, v in summary.items()
                               if k in ("Overall", "Image", "Video", "VisDoc") or k.startswith("rerank_")})
        if self.rank == 0:
            from omniret.training.context import latest_checkpoint
            from omniret.training.plot import plot_run

            source = latest_checkpoint(self.run_dir)
            if source is not None:
                ckpt.export_final(source, self.run_dir / "final")
            plot_run(self.run_dir)
            record_event(self.run_dir, "done", **result)
        _barrier()
        return result

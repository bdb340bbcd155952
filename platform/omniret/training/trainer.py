"""Run one training stage on Ray Train (``TorchTrainer``), or in this process.

:func:`fit` resolves the stage's paths (so workers anywhere read the same files), sets the starting
model from ``train.init_from`` (a previous stage's run folder or a checkpoint), writes the resolved
configuration next to the run, and starts ``TorchTrainer`` with

- ``ScalingConfig(num_workers, use_gpu, resources_per_worker)`` from ``train.*``,
- ``RunConfig(name=train.name, storage_path=train.output_dir)`` so the run folder is
  ``<output_dir>/<name>``: Ray Train's ``checkpoint_<step>`` folders and this project's
  metrics.csv, eval.csv, curves.png and final/ side by side,
- ``FailureConfig(max_failures)``: a failed worker group restarts from the latest checkpoint;
  ``CheckpointConfig(num_to_keep)``.

Running the same stage again (same name and output folder) resumes from its latest checkpoint, or
returns at once when the stage has finished (``final/`` exists). ``local=True`` runs the identical
loop in this process without Ray (one worker).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from omniret.config import OmniretConfig
from omniret.errors import ConfigError
from omniret.training import checkpoint as ckpt
from omniret.training.logbook import read_events

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    final: Path  # the stage's output model (model.path=...)
    metrics: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False  # the stage had finished before


def run_dir_of(cfg: OmniretConfig) -> Path:
    return Path(cfg.train.output_dir).expanduser().resolve() / cfg.train.name


def stage_model(source: str | Path) -> list[str]:
    """Overrides that load a previous stage's output: a run folder (its final/), a training checkpoint,
    or a plain HF checkpoint folder."""
    source = Path(source).expanduser().resolve()
    if (source / "final").is_dir():
        source = source / "final"
    if not source.is_dir():
        raise ConfigError(f"train.init_from {source} is not a run folder or checkpoint")
    if (source / ckpt.INFO_FILE).is_file():
        return ckpt.load_overrides(source)
    return [f"model.path={source}", "model.adapter=null"]


def resolve(cfg: OmniretConfig) -> OmniretConfig:
    """A copy with absolute paths (workers may run elsewhere) and the starting model set."""
    from omniret.config import apply_overrides
    from omniret.models.backbone import checkpoint_path
    from omniret.training.loop import trained_model

    out = cfg.model_copy(deep=True)
    if out.train.init_from:
        data = out.model_dump()
        apply_overrides(data, stage_model(out.train.init_from))
        out = OmniretConfig.model_validate(data)
    if out.train.objective == "rerank" and out.rerank.init_from_embedder:
        out.rerank.model = out.model.model_copy()
    trained = trained_model(out)
    if out.train.objective == "rerank":
        if not out.eval.rerank_top_k and (out.train.eval_at_end or out.train.eval_every):
            raise ConfigError("a rerank stage is evaluated by reranking the embedder's top k: set eval.rerank_top_k "
                              "(e.g. 5), or train.eval_at_end=false and train.eval_every=0")
        out.rerank.model.path = str(checkpoint_path(out.rerank.model).resolve())
    if out.train.mode == "lora" and trained.adapter:
        raise ConfigError("LoRA training starts from a full checkpoint, not base + adapter: start from a run "
                          "folder (its final/ has the adapter merged) or merge the adapter first (omniret soup "
                          "with one adapter and weight 1)")
    out.model.path = str(checkpoint_path(out.model).resolve())  # builds the tiny model once, here
    for model in (out.model, out.rerank.model):
        if model.adapter:
            model.adapter = str(Path(model.adapter).expanduser().resolve())
        if model.head:
            model.head = str(Path(model.head).expanduser().resolve())
    out.data.train = [str(Path(p).expanduser().resolve()) for p in out.data.train]
    out.model.reasoning_from = [str(Path(p).expanduser().resolve()) for p in out.model.reasoning_from]
    if out.data.root:
        out.data.root = str(Path(out.data.root).expanduser().resolve())
    out.eval.root = str(Path(out.eval.root).expanduser().resolve())
    out.train.output_dir = str(Path(out.train.output_dir).expanduser().resolve())
    if out.train.batch_size < out.train.workers:
        raise ConfigError(f"train.batch_size {out.train.batch_size} is smaller than train.workers "
                          f"{out.train.workers}: every worker needs a share of each batch")
    return out


def finished(run_dir: Path) -> dict[str, Any] | None:
    """The final event of a completed run, or None."""
    done = [e for e in read_events(run_dir) if e["event"] == "done"]
    return done[-1] if done and (run_dir / "final").is_dir() else None


def fit(cfg: OmniretConfig, *, local: bool = False) -> TrainResult:
    """Train one stage (see the module docstring); returns where its output is."""
    run_dir = run_dir_of(cfg)
    done = finished(run_dir)
    if done is not None:
        log.info("%s has finished (step %s); delete the folder to train it again", run_dir, done.get("step"))
        return TrainResult(run_dir, run_dir / "final", done, skipped=True)
    cfg = resolve(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    if local:
        from omniret.training.context import LocalContext
        from omniret.training.loop import TrainWorker

        metrics = TrainWorker(cfg, LocalContext(run_dir, cfg.train.num_to_keep), run_dir).run()
    else:
        metrics = _fit_ray(cfg, run_dir)
    return TrainResult(run_dir, run_dir / "final", metrics)


def _fit_ray(cfg: OmniretConfig, run_dir: Path) -> dict[str, Any]:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from omniret.cluster import ensure_ray
    from omniret.training.loop import train_loop_per_worker

    t = cfg.train
    ensure_ray(None)
    resources = {"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {}), **t.resources_per_worker}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump(), "run_dir": str(run_dir)},
        scaling_config=ScalingConfig(num_workers=t.workers, use_gpu=t.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=t.name, storage_path=str(run_dir.parent),
                             failure_config=FailureConfig(max_failures=t.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=t.num_to_keep)),
    )
    result = trainer.fit()
    done = finished(run_dir) or {}
    return {**(result.metrics or {}), **{k: v for k, v in done.items() if k not in ("event", "time")}}

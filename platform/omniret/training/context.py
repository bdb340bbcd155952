"""Where a training worker runs: inside Ray Train, or in this process (tests, single-process runs).

The loop talks to Ray only through a context: its rank and world size, its device, wrapping the
model for DDP, the latest checkpoint to resume from, and reporting metrics with a checkpoint folder.
:class:`RayTrainContext` maps these onto ``ray.train`` (V2 API); :class:`LocalContext` keeps
checkpoints as ``checkpoint_<step>`` folders in the run folder, exactly where Ray Train puts them,
and keeps the newest ``num_to_keep``.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKPOINT_PREFIX = "checkpoint_"


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:06d}"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete ``checkpoint_<step>`` folder of a run (one with a training state), or None."""
    found = sorted(p for p in Path(run_dir).glob(f"{CHECKPOINT_PREFIX}*")
                   if p.is_dir() and (p / "training_state" / "state.json").is_file())
    return found[-1] if found else None


class LocalContext:
    """One process, no Ray: world size 1, checkpoints under ``run_dir``."""

    rank = 0
    world_size = 1

    def __init__(self, run_dir: str | Path, num_to_keep: int | None = None, device: str = "auto"):
        self.run_dir = Path(run_dir)
        self.num_to_keep = num_to_keep
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   "cpu" if device == "auto" else device)

    def prepare_model(self, module: nn.Module) -> nn.Module:
        return module.to(self.device)

    @contextlib.contextmanager
    def checkpoint(self) -> Iterator[Path | None]:
        yield latest_checkpoint(self.run_dir)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None, name: str | None = None) -> None:
        if checkpoint_dir is None:
            return
        target = self.run_dir / (name or checkpoint_dir.name)
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(checkpoint_dir, target)
        if self.num_to_keep:
            kept = sorted(p for p in self.run_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir())
            for old in kept[:-self.num_to_keep]:
                shutil.rmtree(old, ignore_errors=True)


class RayTrainContext:
    """Inside a Ray Train worker (``TorchTrainer``): ranks, device and checkpoints come from ``ray.train``."""

    def __init__(self):
        import ray.train

        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.device = self._device()

    @staticmethod
    def _device() -> torch.device:
        from ray.train.torch import get_device

        device = get_device()
        return device[0] if isinstance(device, list) else device

    def prepare_model(self, module: nn.Module) -> nn.Module:
        from ray.train.torch import prepare_model

        # GradCache synchronises gradients itself (no_sync + one all-reduce): DDP only broadcasts the
        # initial weights and provides no_sync, so parameters a step leaves unused never stall it.
        return prepare_model(module, parallel_strategy_kwargs={"find_unused_parameters": False})

    @contextlib.contextmanager
    def checkpoint(self) -> Iterator[Path | None]:
        import ray.train

        found = ray.train.get_checkpoint()
        if found is None:
            yield None
            return
        with found.as_directory() as folder:
            yield Path(folder)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None = None, name: str | None = None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)

"""Staged training: a recipe is a list of stages, each a full configuration, run in order.

Stage k starts from stage k-1's output (``train.init_from`` defaults to the previous run folder,
whose ``final/`` is a merged HF checkpoint), so RzenEmbed's two stages are two entries: stage 1 on
pairs without instructions (``train.instructions: false``), stage 2 with instructions and hard
negatives (``train.negatives: K``). A stage with ``mine.before_training: true`` first mines hard
negatives for its pairs with the previous stage's model and trains on the mined files. Every stage
is evaluated at its end (``train.eval_at_end``) and every ``train.eval_every`` steps.

A recipe file is an ordinary config file plus a ``stages:`` list; each entry holds the sections
that differ for that stage (deep-merged over the rest of the file). Several ``--config`` files
given together are stages too. ``key=value`` overrides apply to every stage.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from omniret.config import OmniretConfig, load_config, merge
from omniret.errors import ConfigError
from omniret.training.trainer import TrainResult, fit, run_dir_of

log = logging.getLogger(__name__)


def read_yaml(path: str | Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    return data


def load_stages(paths: list[str | Path], overrides: list[str] | None = None,
                root: str | Path | None = None) -> list[OmniretConfig]:
    """The stages of the given config / recipe files, in order, with ``overrides`` applied to each.

    ``root`` (optional) makes the relative paths of every stage (data, eval, output, model) relative
    to it instead of to the current directory (``ray job submit`` runs in a copy of the sources).
    """
    stages = []
    for path in paths:
        data = read_yaml(path)
        entries = data.pop("stages", None)
        if entries is not None and (not isinstance(entries, list) or not entries):
            raise ConfigError(f"{path}: stages must be a non-empty list of sections")
        for i, entry in enumerate(entries or [{}]):
            if not isinstance(entry, dict):
                raise ConfigError(f"{path}: stages[{i}] must be a mapping of sections")
            try:
                cfg = load_config(None, overrides, base=merge(data, entry))
            except ConfigError as exc:
                raise ConfigError(f"{path}, stage {i + 1}: {exc}") from exc
            stages.append(rebase(cfg, Path(root)) if root else cfg)
    names = [s.train.name for s in stages]
    if len(set(names)) != len(names):
        raise ConfigError(f"stages need distinct train.name values, got {names}")
    return stages


def rebase(cfg: OmniretConfig, root: Path) -> OmniretConfig:
    """Make relative paths of ``cfg`` relative to ``root``."""
    def under(value: str | None) -> str | None:
        return value if value is None or Path(value).is_absolute() else str(root / value)

    out = cfg.model_copy(deep=True)
    out.data.train = [under(p) for p in out.data.train]
    out.data.root, out.eval.root = under(out.data.root), under(out.eval.root)
    out.train.output_dir = under(out.train.output_dir)
    out.train.init_from, out.eval.out, out.mine.out = under(out.train.init_from), under(out.eval.out), under(out.mine.out)
    out.model.path, out.model.adapter, out.model.tiny_dir = under(out.model.path), under(out.model.adapter), \
        under(out.model.tiny_dir)
    return out


def run_stages(stages: list[OmniretConfig], *, local: bool = False) -> list[TrainResult]:
    """Train the stages in order, chaining each to the previous one's output (and mining when asked)."""
    results: list[TrainResult] = []
    for i, cfg in enumerate(stages):
        cfg = cfg.model_copy(deep=True)
        if results and not cfg.train.init_from:
            cfg.train.init_from = str(results[-1].run_dir)
        log.info("stage %d/%d: %s", i + 1, len(stages), cfg.train.name)
        if cfg.mine.before_training:
            cfg = mine_for_stage(cfg)
        if cfg.train.batching == "b3":
            from omniret.training.b3 import prepare_stage

            prepare_stage(cfg)
        results.append(fit(cfg, local=local))
        log.info("stage %s done: %s", cfg.train.name, _scores(results[-1].metrics))
    return results


def mine_for_stage(cfg: OmniretConfig) -> OmniretConfig:
    """Mine hard negatives for ``cfg``'s pairs with its starting model; the stage then trains on them."""
    from omniret.config import apply_overrides
    from omniret.training.mining import mine
    from omniret.training.trainer import finished, stage_model

    if not cfg.train.init_from:
        raise ConfigError(f"stage {cfg.train.name}: mine.before_training needs a model to mine with "
                          "(train.init_from or a previous stage)")
    out = Path(cfg.mine.out) if cfg.mine.out else run_dir_of(cfg) / "mined"
    if finished(run_dir_of(cfg)) is None and not (out / "mining.yaml").is_file():
        data = cfg.model_dump()
        apply_overrides(data, stage_model(cfg.train.init_from))
        result = mine(OmniretConfig.model_validate(data), out)
        log.info("mined hard negatives into %s\n%s", out, result.table())
    cfg = cfg.model_copy(deep=True)
    cfg.data.train = [str(out)]
    return cfg


def _scores(metrics: dict[str, Any]) -> str:
    keys = ("step", "loss", "Overall", "Image", "Video", "VisDoc")
    return ", ".join(f"{k} {metrics[k]:.4g}" if isinstance(metrics[k], float) else f"{k} {metrics[k]}"
                     for k in keys if k in metrics)


def summary_lines(results: list[TrainResult]) -> list[str]:
    """One line per stage: where it is and how it scored."""
    return [f"{r.run_dir.name}: {'already finished, ' if r.skipped else ''}output {r.final}; {_scores(r.metrics)}"
            for r in results]

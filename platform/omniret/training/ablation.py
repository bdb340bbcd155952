"""The shape of RzenEmbed's Table 3: each row adds one component to the previous row's recipe.

Rows (cumulative): plain InfoNCE -> + hardness weighting (alpha = 9) -> + false-negative masking
(delta = 0.95) -> + learnable task temperature -> + the paper's one-word system prompt -> + upward
resampling of image tasks (weight 2). Every row is a fine-tuning stage that starts from the same
shared first stage (trained once) and is repeated over several seeds (batch order); the table gives
the mean and the standard deviation of the evaluator's Image / Video / VisDoc / Overall scores.

The ablation config is a recipe: every stage but the last is the shared start, the last stage is the
template each row overrides (see ray_jobs/configs/ablation.yaml).
"""

from __future__ import annotations

import logging
import re
import statistics
from dataclasses import dataclass, field
from typing import Any

from omniret.config import OmniretConfig, apply_overrides
from omniret.training.recipe import run_stages
from omniret.training.trainer import fit

log = logging.getLogger(__name__)

GROUPS = ("Image", "Video", "VisDoc", "Overall")
IMAGE_TASKS = "{image_classification: 2, image_qa: 2, image_retrieval: 2, image_grounding: 2}"
#: (row label, overrides added to the previous row's)
ROWS: list[tuple[str, list[str]]] = [
    ("InfoNCE", ["loss.name=rzen", "loss.options={alpha: 0.0, fn_threshold: null, task_temperature: false}",
                 "loss.mask_duplicates=false", "model.template=rzen_embed", "data.weights={}"]),
    ("+ hardness weighting", ["loss.options.alpha=9.0"]),
    ("+ false-negative masking", ["loss.options.fn_threshold=0.95"]),
    ("+ task temperature", ["loss.options.task_temperature=true"]),
    ("+ system prompt", ["model.template=rzen_embed_paper"]),
    ("+ resampling", [f"data.weights={IMAGE_TASKS}"]),
]


@dataclass
class Cell:
    row: str
    seed: int
    scores: dict[str, float] = field(default_factory=dict)


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def row_configs(template: OmniretConfig, rows: list[tuple[str, list[str]]] = ROWS) -> list[tuple[str, OmniretConfig]]:
    """Each row's configuration: the template plus every override up to and including the row's."""
    out, overrides = [], []
    for label, extra in rows:
        overrides = [*overrides, *extra]
        data = apply_overrides(template.model_dump(), overrides)
        out.append((label, OmniretConfig.model_validate(data)))
    return out


def run_ablation(stages: list[OmniretConfig], seeds: list[int], *, rows: list[tuple[str, list[str]]] = ROWS,
                 local: bool = False) -> list[Cell]:
    """Train the shared start once, then every row x seed from it; returns the final scores."""
    if not stages:
        raise ValueError("the ablation needs at least the row template stage")
    start = run_stages(stages[:-1], local=local) if len(stages) > 1 else []
    cells = []
    for label, cfg in row_configs(stages[-1], rows):
        for seed in seeds:
            run = cfg.model_copy(deep=True)
            run.train.seed = seed
            run.train.name = f"{stages[-1].train.name}-{slug(label)}-s{seed}"
            if start and not run.train.init_from:
                run.train.init_from = str(start[-1].run_dir)
            result = fit(run, local=local)
            cells.append(Cell(label, seed, {g: float(result.metrics[g]) for g in GROUPS if g in result.metrics}))
            log.info("ablation %s seed %d: %s", label, seed, cells[-1].scores)
    return cells


def summarize(cells: list[Cell]) -> list[dict[str, Any]]:
    """Per row: mean and standard deviation of every group over the seeds, in row order."""
    out: list[dict[str, Any]] = []
    for label in dict.fromkeys(c.row for c in cells):
        mine = [c for c in cells if c.row == label]
        row: dict[str, Any] = {"row": label, "seeds": len(mine)}
        for group in GROUPS:
            values = [c.scores[group] for c in mine if group in c.scores]
            if values:
                row[group] = statistics.fmean(values)
                row[f"{group}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(row)
    return out


def markdown_table(summary: list[dict[str, Any]]) -> str:
    """Rows with mean ± sd per group and the Overall change against the previous row."""
    lines = ["| recipe | seeds | " + " | ".join(GROUPS) + " | Δ Overall |", "|---|---:|" + "---:|" * (len(GROUPS) + 1)]
    previous = None
    for row in summary:
        cells = [f"{row[g]:.1f} ± {row[g + '_sd']:.1f}" if g in row else "n/a" for g in GROUPS]
        delta = "" if previous is None or "Overall" not in row else f"{row['Overall'] - previous:+.1f}"
        lines.append(f"| {row['row']} | {row['seeds']} | " + " | ".join(cells) + f" | {delta} |")
        previous = row.get("Overall", previous)
    return "\n".join(lines)

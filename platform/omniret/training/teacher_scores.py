"""Teacher scores for distillation (Qwen3-VL-Embedding stage s2): a reranker scores every training pair.

For each pair the reranker (``Reranker.from_config``: the configured reranker checkpoint) scores the
query against ``[positives[0], *negatives]`` and the pair is written back with those scores in
``Pair.teacher_scores``, in that order, one jsonl per dataset under the output folder. A score is the
reranker's logit ``logit_yes - logit_no`` (not its sigmoid): the distillation loss turns the logits of
one query's candidates into a softmax with its own teacher temperature (losses/distill.py). The pair's
query instruction is the reranker's instruction (the reranker's default when it has none).

A pair whose media cannot be read is left out of the output and reported with its id and reason; the
run goes on. Files are written whole to a temporary name and renamed, and a run with the same pairs and
reranker writes the same files, so re-running it is safe. Scoring runs in this process or, with
``score.ray=true``, through a Ray Data actor pool (:class:`ScoreBatch`, one reranker per actor).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from omniret.config import OmniretConfig
from omniret.data.mixing import group_by_dataset
from omniret.data.readers import read_sources
from omniret.data.schema import Pair, write_pairs
from omniret.errors import MediaError

log = logging.getLogger(__name__)

#: Errors that belong to one pair (unreadable media, prompts that cannot be truncated); others propagate.
PAIR_ERRORS = (MediaError, OSError, ValueError)


@torch.inference_mode()
def pair_logits(reranker, pair: Pair) -> list[float]:
    """The reranker's ``logit_yes - logit_no`` for ``[positives[0], *negatives]`` of ``pair``."""
    name = pair.id or pair.dataset or "pair"
    query = pair.query.to_item(name=f"{name} query")
    docs = [s.to_item(name=f"{name} candidate {i}") for i, s in enumerate([pair.positives[0], *pair.negatives])]
    # The query's instruction goes into the reranker prompt's <Instruct> slot.
    encoded = [reranker.encode_pair(query, doc, pair.query.instruction, i) for i, doc in enumerate(docs)]
    out: list[float] = []
    for start in range(0, len(encoded), reranker.cfg.batch_size):
        batch = reranker.encoder.collate(encoded[start:start + reranker.cfg.batch_size], padding_side="left")
        out += reranker.logits(batch).cpu().tolist()
    return [float(v) for v in out]


def score_pair_list(reranker, pairs: Sequence[Pair]) -> tuple[list[Pair], list[str]]:
    """``(scored pairs, "id: reason" of the pairs that could not be scored)``; input order is kept."""
    scored, errors = [], []
    for pair in pairs:
        try:
            scores = pair_logits(reranker, pair)
        except PAIR_ERRORS as exc:
            errors.append(f"{pair.id or pair.dataset}: {exc}")
            log.warning("pair %s not scored: %s", pair.id, exc)
            continue
        scored.append(with_scores(pair, scores))
    return scored, errors


def with_scores(pair: Pair, scores: Sequence[float]) -> Pair:
    return Pair(pair.query, pair.positives, pair.negatives, pair.dataset, pair.task, pair.id, dict(pair.meta),
                teacher_scores=[round(float(s), 6) for s in scores])


class ScoreBatch:
    """``map_batches`` callable: rows {key, pair (JSON)} -> {key, pair (JSON with scores, or ""), error}."""

    def __init__(self, config: dict[str, Any]):
        from omniret.models.reranker import Reranker

        self.reranker = Reranker.from_config(OmniretConfig.model_validate(config))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pairs = [Pair.from_dict(json.loads(str(row))) for row in batch["pair"]]
        rows, errors = [], []
        for pair in pairs:
            scored, failed = score_pair_list(self.reranker, [pair])
            rows.append(json.dumps(scored[0].to_dict()) if scored else "")
            errors.append(failed[0] if failed else "")
        return {"key": batch["key"], "pair": np.array(rows, dtype=object), "error": np.array(errors, dtype=object)}


@dataclass
class ScoreResult:
    out: Path
    datasets: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (pairs read, pairs scored)
    errors: list[str] = field(default_factory=list)  # "pair id: reason"
    skipped_rows: int = 0  # rows the readers refused

    def table(self) -> str:
        lines = [f"{'dataset':24s} {'pairs':>6s} {'scored':>6s}"]
        lines += [f"{name:24s} {n:6d} {k:6d}" for name, (n, k) in self.datasets.items()]
        return "\n".join(lines)


def _score_with_ray(cfg: OmniretConfig, pairs: list[Pair]) -> tuple[list[Pair], list[str]]:
    import ray.data

    from omniret.cluster import ensure_ray
    from omniret.eval.ray_eval import resolved_config

    ensure_ray(None)
    ray.data.DataContext.get_current().enable_progress_bars = False
    rows = [{"key": i, "pair": json.dumps(p.to_dict())} for i, p in enumerate(pairs)]
    out = ray.data.from_items(rows).map_batches(
        ScoreBatch, fn_constructor_kwargs={"config": resolved_config(cfg).model_dump()},
        batch_size=cfg.score.batch_rows, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=cfg.score.actors))
    done: dict[int, tuple[str, str]] = {}
    for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
        for key, row, error in zip(batch["key"], batch["pair"], batch["error"], strict=True):
            done[int(key)] = (str(row), str(error))
    if len(done) != len(pairs):
        raise RuntimeError(f"Ray Data returned {len(done)} of {len(pairs)} scored pairs")
    scored = [Pair.from_dict(json.loads(done[i][0])) for i in range(len(pairs)) if done[i][0]]
    return scored, [done[i][1] for i in range(len(pairs)) if done[i][1]]


def score_pairs(cfg: OmniretConfig, out: str | Path | None = None, reranker=None) -> ScoreResult:
    """Score every pair of ``cfg.data.train``; writes ``<out>/<dataset>.jsonl`` and ``<out>/scoring.yaml``."""
    out = Path(out or cfg.score.out or Path(cfg.train.output_dir) / cfg.train.name / "scored")
    read = read_sources(cfg.data.train, root=cfg.data.root)
    if not read.pairs:
        raise FileNotFoundError(f"no training pairs could be read from {cfg.data.train}")
    result = ScoreResult(out, skipped_rows=read.skipped)
    if cfg.score.ray:
        scored, result.errors = _score_with_ray(cfg, read.pairs)
    else:
        if reranker is None:
            from omniret.models.reranker import Reranker

            reranker = Reranker.from_config(cfg)
        scored, result.errors = score_pair_list(reranker, read.pairs)
    by_name = group_by_dataset(scored)
    for name, pairs in sorted(group_by_dataset(read.pairs).items()):
        kept = by_name.get(name, [])
        _write_atomic(out / f"{name}.jsonl", kept)
        result.datasets[name] = (len(pairs), len(kept))
    # YAML, not JSON: the folder is read back as pair files, and readers take every .json file.
    summary = {"reranker": cfg.model_dump(mode="json").get("rerank"), "skipped_rows": result.skipped_rows,
               "datasets": {k: {"pairs": n, "scored": s} for k, (n, s) in result.datasets.items()},
               "errors": result.errors}
    (out / "scoring.yaml").write_text(yaml.safe_dump(summary, sort_keys=False))
    return result


def _write_atomic(path: Path, pairs: list[Pair]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write_pairs(tmp, pairs)
    os.replace(tmp, path)


def score_for_stage(cfg: OmniretConfig, reranker=None) -> OmniretConfig:
    """``score.before_training`` in a recipe: score ``cfg``'s pairs (once: a finished ``scoring.yaml`` is
    reused) into ``score.out`` or ``<run>/scored``; returns ``cfg`` training on the scored pairs."""
    out = Path(cfg.score.out) if cfg.score.out else Path(cfg.train.output_dir) / cfg.train.name / "scored"
    if not (out / "scoring.yaml").is_file():
        result = score_pairs(cfg, out, reranker)
        log.info("teacher scores written to %s\n%s", out, result.table())
    cfg = cfg.model_copy(deep=True)
    cfg.data.train = [str(out)]
    return cfg

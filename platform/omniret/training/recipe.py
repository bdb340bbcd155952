"""Staged training: a recipe is a list of stages, each a full configuration, run in order.

Stage k starts from stage k-1's output (``train.init_from`` defaults to the previous run folder,
whose ``final/`` is a merged HF checkpoint; a reranker stage, ``train.objective: rerank``, trains
``rerank.model`` and is skipped in this chain: the stage after it starts from the embedder before
it, which is also the reranker stage's ``model``, the embedder that retrieves for its evaluation), so RzenEmbed's two stages are two entries: stage 1 on
pairs without instructions (``train.instructions: false``), stage 2 with instructions and hard
negatives (``train.negatives: K``). A stage with ``mine.before_training: true`` first mines hard
negatives for its pairs with the previous stage's model and trains on the mined files; one with
``score.before_training: true`` then scores its pairs with the reranker (``rerank.model``: the latest
reranker stage by default) and trains on the scored files (the ``distill`` loss reads the scores). A
merge stage (``train.objective: merge``) trains nothing: it merges the last two embedder stages (or
``merge.checkpoints``) with ``merge.method`` and evaluates the result, Qwen3-VL-Embedding's last stage.
Every stage is evaluated at its end (``train.eval_at_end``) and every ``train.eval_every`` steps.

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
    out.model.reasoning_from = [under(p) for p in out.model.reasoning_from]
    out.data.root, out.eval.root = under(out.data.root), under(out.eval.root)
    out.train.output_dir = under(out.train.output_dir)
    out.train.init_from, out.eval.out, out.mine.out = under(out.train.init_from), under(out.eval.out), under(out.mine.out)
    for model in (out.model, out.rerank.model, out.reason.model):
        model.path, model.adapter, model.tiny_dir = under(model.path), under(model.adapter), under(model.tiny_dir)
    out.reason.sft_from = [under(p) for p in out.reason.sft_from]
    return out


def run_stages(stages: list[OmniretConfig], *, local: bool = False) -> list[TrainResult]:
    """Train the stages in order, chaining each to the previous one's output (and mining when asked)."""
    results: list[TrainResult] = []
    embedder_run: Path | None = None  # the latest stage that trained the embedder
    reranker_run: Path | None = None  # the latest stage that trained the reranker
    embedder_runs: list[Path] = []  # every embedder stage so far (what a merge stage merges by default)
    for i, cfg in enumerate(stages):
        cfg = cfg.model_copy(deep=True)
        if embedder_run is not None and not cfg.train.init_from and cfg.train.objective != "reason_sft":
            cfg.train.init_from = str(embedder_run)
        if reranker_run is not None and cfg.train.objective != "rerank" and not cfg.rerank.model.path:
            # later embedder stages are evaluated with the trained reranker (eval.rerank_top_k)
            cfg.rerank.model.path = str(reranker_run / "final")
        log.info("stage %d/%d: %s", i + 1, len(stages), cfg.train.name)
        if cfg.train.objective == "merge":
            results.append(merge_stage(cfg, embedder_runs))
            embedder_run = results[-1].run_dir
            embedder_runs.append(embedder_run)
            log.info("stage %s done: %s", cfg.train.name, _scores(results[-1].metrics))
            continue
        if cfg.mine.before_training:
            cfg = mine_for_stage(cfg)
        if cfg.score.before_training:
            from omniret.training.teacher_scores import score_for_stage

            cfg = score_for_stage(cfg)
        if cfg.train.batching == "b3":
            from omniret.training.b3 import prepare_stage

            prepare_stage(cfg)
        results.append(fit(cfg, local=local))
        if cfg.train.objective == "rerank":
            reranker_run = results[-1].run_dir
        elif cfg.train.objective != "reason_sft":  # a reasoner is used through `omniret reason`, not chained
            embedder_run = results[-1].run_dir
            embedder_runs.append(embedder_run)
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


def merge_stage(cfg: OmniretConfig, embedder_runs: list[Path]) -> TrainResult:
    """``train.objective: merge``: merge ``merge.checkpoints`` (default: the outputs of the last two embedder
    stages, as Qwen3-VL-Embedding merges its distilled model with the stage before) into ``<run>/final``,
    then evaluate the merged model like a trained stage (``<run>/eval/final``)."""
    from omniret.config import apply_overrides
    from omniret.eval.runner import run as evaluate_model
    from omniret.models.merge import merge_from_config
    from omniret.training.logbook import record_event
    from omniret.training.trainer import finished

    run_dir = run_dir_of(cfg)
    done = finished(run_dir)
    if done is not None:
        return TrainResult(run_dir, run_dir / "final", done, skipped=True)
    checkpoints = cfg.merge.checkpoints or [str(r / "final") for r in embedder_runs[-2:]]
    if len(checkpoints) < 2:
        raise ConfigError(f"stage {cfg.train.name}: a merge stage needs merge.checkpoints or two embedder "
                          "stages before it")
    data = cfg.model_dump()
    data["merge"].update(checkpoints=checkpoints, adapters=[], out=str(run_dir / "final"))
    data["eval"]["out"] = str(run_dir / "eval" / "final")
    apply_overrides(data, [f"model.path={run_dir / 'final'}", "model.adapter=null"])
    merged = OmniretConfig.model_validate(data)
    merge_from_config(merged)
    log.info("merged %s into %s (%s)", ", ".join(checkpoints), run_dir / "final", cfg.merge.method)
    metrics: dict[str, Any] = {"step": 0, "merged": checkpoints}
    if cfg.train.eval_at_end:
        report = evaluate_model(merged)
        metrics.update({k: v for k, v in report["summary"].items() if isinstance(v, float)})
    record_event(run_dir, "done", **metrics)
    return TrainResult(run_dir, run_dir / "final", metrics)


def _scores(metrics: dict[str, Any]) -> str:
    keys = ("step", "loss", "Overall", "Image", "Video", "VisDoc")
    return ", ".join(f"{k} {metrics[k]:.4g}" if isinstance(metrics[k], float) else f"{k} {metrics[k]}"
                     for k in keys if k in metrics)


def summary_lines(results: list[TrainResult]) -> list[str]:
    """One line per stage: where it is and how it scored."""
    return [f"{r.run_dir.name}: {'already finished, ' if r.skipped else ''}output {r.final}; {_scores(r.metrics)}"
            for r in results]


def stage_tables(stages: list[OmniretConfig], results: list[TrainResult]) -> str:
    """One markdown table per stage from its final evaluation (``eval/final/report.json``): the embedder
    alone (each dataset's main metric, MMEB means) and, where the stage reranked, hit@1 and nDCG@5
    of the embedder alone and of the embedder + reranker."""
    import json

    out = []
    for cfg, result in zip(stages, results, strict=True):
        path = result.run_dir / "eval" / "final" / "report.json"
        if not path.is_file():
            out.append(f"{cfg.train.name}: no final evaluation ({path} is missing)\n")
            continue
        out.append(stage_table(cfg, json.loads(path.read_text())))
    return "\n".join(out)


def stage_kind(cfg: OmniretConfig) -> str:
    return {"rerank": "reranker", "merge": "merged embedder"}.get(cfg.train.objective, "embedder")


def stage_table(cfg: OmniretConfig, report: dict[str, Any], rerank: dict[str, Any] | None = None) -> str:
    """The table of one stage: its evaluation ``report`` (embedder alone, main metric) and the reranking
    section (``rerank``, default ``report["rerank"]``): hit@1 and nDCG@5 before and after reranking."""
    groups = ("Image", "Video", "VisDoc", "Overall")
    rows = [("embedder alone, main metric", report["summary"])]
    section = rerank or report.get("rerank")
    if section:
        s = section["summary"]
        k = section["top_k"]
        rows += [("embedder alone, hit@1", s["hit@1"]["before"]),
                 *([(f"embedder, its top {k} in random order, hit@1 (expected)", shuffled)]
                   if (shuffled := random_order_hit1(report, k)) else []),
                 (f"embedder + reranker (top {k}), hit@1", s["hit@1"]["after"]),
                 ("embedder alone, nDCG@5", s["ndcg@5"]["before"]),
                 (f"embedder + reranker (top {section['top_k']}), nDCG@5", s["ndcg@5"]["after"])]
    steps = "merged, no steps" if cfg.train.objective == "merge" else f"{report.get('step', '?')} steps"
    lines = [f"{cfg.train.name} ({stage_kind(cfg)}, {steps}, seed {cfg.train.seed})", "",
             "| model | " + " | ".join(groups) + " |", "|---|" + "---:|" * len(groups)]
    for label, summary in rows:
        lines.append(f"| {label} | " + " | ".join(f"{summary[g]:.1f}" if g in summary else "n/a"
                                                   for g in groups) + " |")
    return "\n".join(lines) + "\n"


def random_order_hit1(report: dict[str, Any], k: int) -> dict[str, float]:
    """Expected hit@1 if the embedder's top ``k`` were put in random order (what a reranker that cannot tell
    the candidates apart gives): hit@k / min(k, candidates per query) per dataset, one positive per query,
    then plain means over datasets per category and Overall, as the report aggregates. Where the number of
    candidates varies between queries, its mean stands in (an approximation: the report keeps no per-query
    counts). Empty when hit@k is not reported."""
    per: dict[str, list[float]] = {}
    for ds in report.get("datasets", []):
        hit = ds.get("metrics", {}).get(f"hit@{k}")
        pool = ds.get("candidates", {}).get("per_query_mean")
        if hit is None or not pool:
            return {}
        value = 100.0 * hit / min(k, pool)
        per.setdefault(ds["category"], []).append(value)
        per.setdefault("Overall", []).append(value)
    return {group: sum(v) / len(v) for group, v in per.items()}

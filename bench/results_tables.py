"""Regenerate the results tables that README.md and docs/RECIPES.md quote, from a recipe's finished runs.

    python ray_jobs/train.py --config ray_jobs/configs/quickstart.yaml    # first: train (and evaluate) the stages
    python bench/results_tables.py                                        # then: rewrite the tables

``results:NAME``: one row each for chance, the text-overlap baseline, the untrained starting model
(evaluated here once, cached under ``<train.output_dir>/untrained-<first stage>/``) and every embedder
stage's final evaluation (``<run>/eval/final/report.json``); columns: the task groups (MMEB
meta-tasks), the Image / Video / VisDoc means and Overall.
``results:NAME-stages``: one table per stage, the embedder alone and the embedder + the recipe's trained
reranker over its top k (hit@1 and nDCG@5 before and after). A stage evaluated before the reranker
existed is reranked here with the recipe's last reranker stage (``<run>/eval/reranked/``, cached), or
takes the reranker stage's own evaluation when that stage reranked exactly this stage's model.
``results:NAME-line``: the one-line summary the README quotes.
Each document gets each block between its ``<!-- results:X begin -->`` / ``<!-- results:X end -->``
markers; text outside the markers (the prose) is left as it is.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))

from omniret.config import OmniretConfig  # noqa: E402

GROUPS = ["I-CLS", "I-QA", "I-RET", "I-VG", "V-RET", "V-QA", "VD-Docs"]
MEANS = ["Image", "Video", "VisDoc", "Overall"]


def untrained_report(first: OmniretConfig, fresh: bool = False) -> dict[str, Any]:
    """The first stage's starting model on the same evaluation sets and media settings (cached)."""
    from omniret.eval.mmeb import load_datasets
    from omniret.eval.report import write_report
    from omniret.eval.runner import evaluate

    folder = Path(first.train.output_dir) / f"untrained-{first.train.name}" / "eval"
    if (folder / "report.json").is_file() and not fresh:
        return json.loads((folder / "report.json").read_text())
    cfg = first.model_copy(deep=True)
    if first.train.init_from:
        from omniret.config import apply_overrides
        from omniret.training.trainer import stage_model

        cfg = OmniretConfig.model_validate(apply_overrides(cfg.model_dump(), stage_model(first.train.init_from)))
    datasets, skipped = load_datasets(cfg.eval)
    report = evaluate(cfg, datasets, skipped=skipped)
    write_report(report, folder)
    return report


def stage_report(stage: OmniretConfig) -> dict[str, Any]:
    path = run_dir(stage) / "eval" / "final" / "report.json"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: train the recipe first (its stages evaluate at their end)")
    return json.loads(path.read_text())


def run_dir(stage: OmniretConfig) -> Path:
    return Path(stage.train.output_dir) / stage.train.name


def rerank_sections(stages: list[OmniretConfig], reports: list[dict[str, Any]],
                    fresh: bool = False) -> list[dict[str, Any] | None]:
    """Per stage, its reranking section: its own, the next reranker stage's (which reranked this
    stage's model), or a reranked evaluation with the recipe's last reranker; None without a reranker."""
    rerankers = [s for s in stages if s.train.objective == "rerank"]
    out: list[dict[str, Any] | None] = []
    for i, (stage, report) in enumerate(zip(stages, reports, strict=True)):
        nxt = stages[i + 1] if i + 1 < len(stages) else None
        if report.get("rerank"):
            out.append(report["rerank"])
        elif nxt is not None and nxt.train.objective == "rerank" and not nxt.train.init_from:
            out.append(reports[i + 1].get("rerank"))  # the reranker stage's model is this stage's output
        elif rerankers:
            out.append(reranked_report(stage, rerankers[-1], fresh)["rerank"])
        else:
            out.append(None)
    return out


def reranked_report(stage: OmniretConfig, reranker: OmniretConfig, fresh: bool = False) -> dict[str, Any]:
    """``stage``'s final model evaluated with ``reranker``'s trained model over its top k (cached)."""
    from omniret.config import apply_overrides
    from omniret.eval.runner import run
    from omniret.training.trainer import stage_model

    folder = run_dir(stage) / "eval" / "reranked"
    if (folder / "report.json").is_file() and not fresh:
        return json.loads((folder / "report.json").read_text())
    k = reranker.eval.rerank_top_k or 5
    print(f"evaluating {stage.train.name} with the reranker of {reranker.train.name} (top {k}) ...", flush=True)
    data = apply_overrides(stage.model_dump(), stage_model(run_dir(stage)))
    apply_overrides(data, [f"rerank.model.path={run_dir(reranker) / 'final'}", "rerank.model.adapter=null",
                           f"eval.rerank_top_k={k}", f"eval.out={folder}"])
    return run(OmniretConfig.model_validate(data))


def _cells(summary: dict[str, Any]) -> list[str]:
    metas = summary.get("meta_tasks", {})
    values = [metas.get(g) for g in GROUPS] + [summary.get(m) for m in MEANS]
    return ["n/a" if v is None else f"{v:.1f}" for v in values]


def describe(stage: OmniretConfig) -> str:
    t = stage.train
    if t.objective == "merge":
        return f"{t.name} ({stage.merge.method} merge of the two embedder stages before)"
    steps = f"{t.max_steps} steps" if t.max_steps else f"{t.epochs} epochs"
    parts = [steps, "instructions" if t.instructions else "no instructions"]
    if t.negatives:
        parts.append(f"{t.negatives} {'mined ' if stage.mine.before_training else ''}hard negatives")
    if stage.loss.name == "distill":
        base = stage.loss.options.get("base")
        parts.append(f"{base} + {stage.loss.options.get('distill_weight', 1.0):g} x distill from the reranker"
                     if base else "distill from the reranker")
    return f"{t.name} ({', '.join(parts)})"


def table(stages: list[OmniretConfig], untrained: dict[str, Any], reports: list[dict[str, Any]]) -> str:
    """The embedder stages' main metrics next to chance, text overlap and the untrained model."""
    last = reports[-1]
    overlap = last["baseline_summary"].get("text_overlap", {})
    rows = [("chance", last["baseline_summary"]["chance"]),
            (f"text overlap ({overlap.get('counts', {}).get('Overall', 0)} datasets with text candidates)", overlap),
            ("untrained", untrained["summary"])]
    rows += [(describe(s), r["summary"]) for s, r in zip(stages, reports, strict=True)
             if s.train.objective != "rerank"]
    lines = ["| model | " + " | ".join(GROUPS + MEANS) + " |", "| --- |" + " ---: |" * (len(GROUPS) + len(MEANS))]
    for i, (name, summary) in enumerate(rows):
        cells = _cells(summary)
        if i == len(rows) - 1:
            cells[-1] = f"**{cells[-1]}**"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stages_tables(stages: list[OmniretConfig], reports: list[dict[str, Any]],
                  sections: list[dict[str, Any] | None]) -> str:
    from omniret.training.recipe import stage_table

    return "\n".join(stage_table(s, r, rerank=sec) for s, r, sec in zip(stages, reports, sections, strict=True))


def sentence(stages: list[OmniretConfig], untrained: dict[str, Any], reports: list[dict[str, Any]],
             sections: list[dict[str, Any] | None]) -> str:
    base = reports[-1]["baseline_summary"]
    embedders = [(s, r) for s, r in zip(stages, reports, strict=True) if s.train.objective != "rerank"]
    line = (f"Overall {untrained['summary']['Overall']:.1f} (untrained) -> "
            + " -> ".join(f"{r['summary']['Overall']:.1f}" for _, r in embedders)
            + f" on the generated benchmark (text overlap {base['text_overlap']['Overall']:.1f}, "
              f"chance {base['chance']['Overall']:.1f})")
    last = sections[-1]
    if last:
        hit = last["summary"]["hit@1"]
        line += (f"; hit@1 of the last stage {hit['before']['Overall']:.1f} alone, "
                 f"{hit['after']['Overall']:.1f} with the trained reranker over its top {last['top_k']}")
    return line


def replace_block(path: Path, name: str, body: str) -> bool:
    """Put ``body`` between the ``name`` markers of ``path``; False if the file has no such markers."""
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(rf"(<!-- results:{re.escape(name)} begin[^>]*-->)(.*?)(<!-- results:{re.escape(name)} end -->)",
                         re.S)
    if not pattern.search(text):
        return False
    # A block on its own lines stays on its own lines; one inside a sentence stays inline.
    new = pattern.sub(lambda m: m.group(1) + (f"\n{body}\n" if "\n" in m.group(2) else body) + m.group(3), text,
                      count=1)
    path.write_text(new, encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    from omniret.training.recipe import load_stages

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "ray_jobs" / "configs" / "quickstart.yaml")
    parser.add_argument("--name", default="quickstart",
                        help="marker name: results:NAME, results:NAME-stages and results:NAME-line")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="folder the recipe's relative paths refer to")
    parser.add_argument("--docs", type=Path, nargs="+", default=[REPO / "docs" / "RECIPES.md", REPO / "README.md"])
    parser.add_argument("--fresh", action="store_true",
                        help="re-evaluate the untrained model and the stages reranked afterwards")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="as given to the training command")
    args = parser.parse_args(argv)
    stages = [s for s in load_stages([args.recipe], args.overrides, root=args.root) if s.train.eval_at_end]
    reports = [stage_report(s) for s in stages]
    untrained = untrained_report(stages[0], args.fresh)
    sections = rerank_sections(stages, reports, args.fresh)
    blocks = {args.name: table(stages, untrained, reports),
              f"{args.name}-stages": stages_tables(stages, reports, sections),
              f"{args.name}-line": sentence(stages, untrained, reports, sections)}
    print(*blocks.values(), sep="\n\n")
    for doc in args.docs:
        written = [n for n, b in blocks.items() if replace_block(doc, n, b)]
        print(f"{doc}: {', '.join(written) if written else 'no results markers, left as it was'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

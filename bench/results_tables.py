"""Regenerate the results tables that README.md and docs/RECIPES.md quote, from a recipe's finished runs.

    python ray_jobs/train.py --config ray_jobs/configs/quickstart.yaml    # first: train (and evaluate) the stages
    python bench/results_tables.py                                        # then: rewrite the tables

Rows: chance, the text-overlap baseline, the untrained starting model (evaluated here once, cached
under ``<train.output_dir>/untrained-<first stage>/``), and every stage's final evaluation
(``<run>/eval/final/report.json``); columns: the task groups (MMEB meta-tasks), the Image / Video /
VisDoc means and Overall. Each document gets the table between its
``<!-- results:NAME begin -->`` / ``<!-- results:NAME end -->`` markers; text outside the markers
(the prose) is left as it is.
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
    path = Path(stage.train.output_dir) / stage.train.name / "eval" / "final" / "report.json"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: train the recipe first (its stages evaluate at their end)")
    return json.loads(path.read_text())


def _cells(summary: dict[str, Any]) -> list[str]:
    metas = summary.get("meta_tasks", {})
    values = [metas.get(g) for g in GROUPS] + [summary.get(m) for m in MEANS]
    return ["n/a" if v is None else f"{v:.1f}" for v in values]


def describe(stage: OmniretConfig) -> str:
    t = stage.train
    steps = f"{t.max_steps} steps" if t.max_steps else f"{t.epochs} epochs"
    parts = [steps, "instructions" if t.instructions else "no instructions"]
    if t.negatives:
        parts.append(f"{t.negatives} {'mined ' if stage.mine.before_training else ''}hard negatives")
    return f"{t.name} ({', '.join(parts)})"


def table(stages: list[OmniretConfig], untrained: dict[str, Any], reports: list[dict[str, Any]]) -> str:
    last = reports[-1]
    overlap = last["baseline_summary"].get("text_overlap", {})
    rows = [("chance", last["baseline_summary"]["chance"]),
            (f"text overlap ({overlap.get('counts', {}).get('Overall', 0)} datasets with text candidates)", overlap),
            ("untrained", untrained["summary"])]
    rows += [(describe(s), r["summary"]) for s, r in zip(stages, reports, strict=True)]
    lines = ["| model | " + " | ".join(GROUPS + MEANS) + " |", "| --- |" + " ---: |" * (len(GROUPS) + len(MEANS))]
    for i, (name, summary) in enumerate(rows):
        cells = _cells(summary)
        if i == len(rows) - 1:
            cells[-1] = f"**{cells[-1]}**"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sentence(untrained: dict[str, Any], reports: list[dict[str, Any]]) -> str:
    base = reports[-1]["baseline_summary"]
    return (f"Overall {untrained['summary']['Overall']:.1f} (untrained) -> "
            + " -> ".join(f"{r['summary']['Overall']:.1f}" for r in reports)
            + f" on the generated benchmark (text overlap {base['text_overlap']['Overall']:.1f}, "
              f"chance {base['chance']['Overall']:.1f})")


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
    parser.add_argument("--name", default="quickstart", help="marker name: results:NAME and results:NAME-line")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="folder the recipe's relative paths refer to")
    parser.add_argument("--docs", type=Path, nargs="+", default=[REPO / "docs" / "RECIPES.md", REPO / "README.md"])
    parser.add_argument("--fresh", action="store_true", help="re-evaluate the untrained model")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="as given to the training command")
    args = parser.parse_args(argv)
    stages = [s for s in load_stages([args.recipe], args.overrides, root=args.root) if s.train.eval_at_end]
    reports = [stage_report(s) for s in stages]
    untrained = untrained_report(stages[0], args.fresh)
    body, line = table(stages, untrained, reports), sentence(untrained, reports)
    print(body, "", line, sep="\n")
    for doc in args.docs:
        written = [n for n, b in ((args.name, body), (f"{args.name}-line", line)) if replace_block(doc, n, b)]
        print(f"{doc}: {', '.join(written) if written else 'no results markers, left as it was'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

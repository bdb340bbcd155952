"""The evaluation report: a JSON document (model, config hash, frame count, candidate counts, scores,
baselines, MMEB summary) and its markdown tables."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omniret.config import OmniretConfig


def config_hash(cfg: OmniretConfig) -> str:
    """Hash of everything that changes the embeddings: model, media and embed settings."""
    dump = cfg.model_dump()
    dump["embed"].pop("progress", None)
    relevant = {k: dump[k] for k in ("model", "media", "embed")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]


def frames_setting(cfg: OmniretConfig) -> str:
    m = cfg.media
    return f"{m.video_frames} frames" if m.video_frames else f"{m.video_fps:g} fps, at most {m.video_max_frames} frames"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _candidates(row: dict[str, Any]) -> str:
    counts = row["candidates"]
    if row["kind"] == "global":
        return f"pool {counts['pool']}"
    mean = counts["per_query_mean"]
    return f"{mean:.0f}" if mean == int(mean) else f"{mean:.1f}"


def markdown(report: dict[str, Any]) -> str:
    model = report["model"]
    baselines = list(report["baselines"])
    heads = ["model", *(b.replace("_", " ") for b in baselines)]
    lines = [f"model `{model['id']}` ({model['path']}{', adapter ' + model['adapter'] if model['adapter'] else ''}), "
             f"template {model['template']}, config {report['config_hash']}, video {report['video_frames']}, "
             f"ties {report['ties']}", "",
             "| dataset | meta-task | metric | queries | candidates | " + " | ".join(heads) + " |",
             "|---|---|---|---:|---:|" + "---:|" * len(heads)]
    for row in report["datasets"]:
        cells = [row["name"], row["meta_task"], row["metric"], str(row["queries"]), _candidates(row),
                 _fmt(row["score"]), *(_fmt(row["baselines"].get(b)) for b in baselines)]
        note = f" ({row['failed_queries']} failed queries)" if row["failed_queries"] else ""
        lines.append("| " + " | ".join(cells) + " |" + note)
    lines += ["", "| summary | datasets | " + " | ".join(heads) + " |", "|---|---:|" + "---:|" * len(heads)]
    summary = report["summary"]
    groups = [(m, report["meta_task_counts"][m]) for m in summary.get("meta_tasks", {})]
    groups += [(g, summary["counts"][g]) for g in ("Image", "Video", "VisDoc", "Overall") if g in summary]
    for group, count in groups:
        values = [_summary_value(summary, group)]
        for b in baselines:
            base = report["baseline_summary"][b]
            value = _summary_value(base, group)
            n = base.get("counts", {}).get(group) if group in ("Image", "Video", "VisDoc", "Overall") else None
            values.append(_fmt(value) + (f" (n={n})" if n is not None and n != count else ""))
        lines.append(f"| {group} | {count} | {_fmt(values[0])} | " + " | ".join(values[1:]) + " |")
    if report["skipped_datasets"]:
        lines += ["", "skipped: " + "; ".join(report["skipped_datasets"])]
    if report.get("rerank"):
        from omniret.eval.rerank import markdown as rerank_markdown

        lines += ["", rerank_markdown(report["rerank"]).rstrip("\n")]
    if report.get("ume"):
        from omniret.eval.ume import markdown as ume_markdown

        lines += ["", ume_markdown(report["ume"]).rstrip("\n")]
    return "\n".join(lines) + "\n"


def _summary_value(summary: dict[str, Any], group: str) -> float | None:
    return summary.get("meta_tasks", {}).get(group, summary.get(group)) if group not in (
        "Image", "Video", "VisDoc", "Overall") else summary.get(group)


def write_report(report: dict[str, Any], folder: str | Path) -> tuple[Path, Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / "report.json", folder / "report.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(markdown(report), encoding="utf-8")
    return json_path, md_path

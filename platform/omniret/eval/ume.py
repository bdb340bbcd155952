"""Evaluate a UME-R1 checkpoint in its embedding modes (``eval.ume_modes``): disc, gen and auto side by side.

Each mode embeds every query and candidate through :class:`~omniret.models.generative.UmeModeEmbedder`
and is scored by the ordinary runner (same datasets, metrics, ties and MMEB aggregation). The report
is the first mode's ordinary report plus ``ume``: per mode the summary (per meta-task and task group),
per-dataset scores, seconds per embedded item (wall time of embedding, in this process, greedy
generation of at most ``ume.max_new_tokens`` for gen and auto) and the share of items whose completion
had a ``<gen_emb>``. gen and auto share one generation per item (auto reports the time of the generation
it reused: it costs what gen costs). A checkpoint without the tokens is refused with an error naming ``eval.ume_modes``.
"""

from __future__ import annotations

from typing import Any

from omniret.config import OmniretConfig
from omniret.errors import ConfigError
from omniret.eval.dataset import EvalDataset

GROUPS = ("Image", "Video", "VisDoc", "Overall")


def load_view(cfg: OmniretConfig, what: str = "eval.ume_modes"):
    """The UME-R1 view of ``cfg.model``; ConfigError naming ``what`` when the checkpoint lacks the tokens."""
    from omniret.models.backbone import load_backbone
    from omniret.models.generative import GenerativeEmbedder, has_embedding_tokens

    backbone = load_backbone(cfg.model)
    if not has_embedding_tokens(backbone.tokenizer):
        raise ConfigError(f"{what} needs a UME-R1 checkpoint, but {backbone.path} has no <disc_emb> / <gen_emb> "
                          "tokens (train one with train.objective=ume_sft, or leave eval.ume_modes empty)")
    return GenerativeEmbedder(backbone, cfg.media, cfg.model.max_length, cfg.ume.batch_size)


def evaluate_modes(cfg: OmniretConfig, datasets: list[EvalDataset], skipped: list[str] | None = None,
                   view=None) -> dict[str, Any]:
    """Score ``datasets`` once per mode of ``cfg.eval.ume_modes``; see the module docstring for the report."""
    from omniret.eval.runner import evaluate
    from omniret.models.backbone import model_tag
    from omniret.models.generative import UmeModeEmbedder

    view = view or load_view(cfg)
    first, modes, generations = None, {}, {}
    for mode in dict.fromkeys(cfg.eval.ume_modes):
        embedder = UmeModeEmbedder(view, mode, cfg.ume.max_new_tokens, model_tag(cfg.model), shared=generations)
        report = evaluate(cfg, datasets, embedder=embedder, skipped=skipped)
        items = max(embedder.items, 1)
        modes[mode] = {"summary": report["summary"], "scores": {r["name"]: r["score"] for r in report["datasets"]},
                       "items": embedder.items, "seconds_per_item": embedder.seconds / items,
                       "gen_emb_share": None if mode == "disc" else embedder.generated / items}
        first = first or report
    first["model"]["template"] = "ume_r1"
    first["ume"] = {"modes": modes, "max_new_tokens": cfg.ume.max_new_tokens}
    return first


def markdown(section: dict[str, Any]) -> str:
    """Modes x (meta-tasks, task groups), seconds per item and the <gen_emb> share."""
    modes = section["modes"]
    groups: list[str] = []
    for entry in modes.values():
        summary = entry["summary"]
        for name in [*summary.get("meta_tasks", {}), *(g for g in GROUPS if g in summary)]:
            if name not in groups:
                groups.append(name)
    lines = [f"UME-R1 modes (gen and auto: greedy, at most {section['max_new_tokens']} new tokens)", "",
             "| mode | " + " | ".join(groups) + " | s / item | <gen_emb> share |",
             "|---|" + "---:|" * (len(groups) + 2)]
    for mode, entry in modes.items():
        summary = entry["summary"]
        values = [summary.get("meta_tasks", {}).get(g, summary.get(g)) for g in groups]
        share = entry["gen_emb_share"]
        lines.append(f"| {mode} | " + " | ".join("-" if v is None else f"{v:.1f}" for v in values)
                     + f" | {entry['seconds_per_item']:.3f} | {'-' if share is None else f'{share:.2f}'} |")
    return "\n".join(lines) + "\n"

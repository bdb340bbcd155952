"""The ECR job: reason over training pairs or evaluation sets and write the ECR next to them.

Work: every side chosen by ``reason.sides`` (queries, targets or both) of the pairs in
``reason.pairs`` and of the evaluation sets under ``reason.eval_root``, each with its template
(``reason.template``, or by task group), deduplicated by record key (content hash + template id +
reasoner id). Keys already in ``<out>/ecr.jsonl`` are skipped before any model loads, so a re-run
after a kill generates only what is missing, and a finished run generates nothing.

The reasoner runs in :class:`ReasonBatch`, a callable class for ``map_batches`` on a Ray Data actor
pool (one model per actor, like ingest's embedder), or in this process (``reason.ray=false``); with
``reason.engine=vllm`` it runs through ``ray.data.llm`` instead (:mod:`omniret.reasoning.vllm_engine`:
the same rows, keys and store). Its
results stream back to the driver, which appends them to ``ecr.jsonl`` batch by batch. An item that
cannot be read (missing file, undecodable media, too long) is reported by name in ``errors.jsonl``
and the job goes on; a generation that never closes ``</think>`` is written with ``truncated: true``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omniret.config import OmniretConfig
from omniret.data.schema import Side
from omniret.errors import ConfigError, MediaError
from omniret.reasoning.store import EcrWriter, content_hash, done_keys, record_key, write_errors
from omniret.reasoning.templates import chosen_template, get_reason_template

log = logging.getLogger(__name__)

_RESULT_FIELDS = ("text", "think", "summary", "closed", "truncated", "new_tokens")


@dataclass
class ReasonSummary:
    out: Path
    items: int = 0  # distinct records the sources ask for
    already_done: int = 0
    written: int = 0
    truncated: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [f"records wanted {self.items}, already stored {self.already_done}, written {self.written} "
                f"({self.truncated} truncated at reason.max_new_tokens), errors {len(self.errors)}",
                f"ECR in {self.out / 'ecr.jsonl'}; errors in {self.out / 'errors.jsonl'}"]


def _template(cfg: OmniretConfig, task: str):
    return chosen_template(cfg.reason.template, task)


def work_rows(cfg: OmniretConfig, reasoner: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows to reason about, errors): one row per distinct record key, in source order."""
    r = cfg.reason
    sides: list[tuple[Side, str, str, str, str]] = []  # side, name, role, dataset, task
    errors: list[dict[str, Any]] = []
    if r.pairs:
        from omniret.data.readers import read_sources

        read = read_sources(r.pairs, root=cfg.data.root, check_media=False)
        errors += [{"name": f"{p.file}:{p.line}", "stage": "read", "reason": p.reason} for p in read.problems]
        for pair in read.pairs:
            base = f"{pair.dataset} {pair.id or 'pair'}"
            if r.sides in ("query", "both"):
                sides.append((pair.query, f"{base} query", "query", pair.dataset, pair.task))
            if r.sides in ("target", "both"):
                sides += [(s, f"{base} positive {i}", "target", pair.dataset, pair.task)
                          for i, s in enumerate(pair.positives)]
                sides += [(s, f"{base} negative {i}", "target", pair.dataset, pair.task)
                          for i, s in enumerate(pair.negatives)]
    if r.eval_root:
        from omniret.eval.mmeb import load_datasets

        datasets, skipped = load_datasets(cfg.eval.model_copy(update={"root": r.eval_root}))
        errors += [{"name": s.split(":")[0], "stage": "read", "reason": s} for s in skipped]
        for ds in datasets:
            if r.sides in ("query", "both"):
                sides += [(s, f"{ds.name} query {q}", "query", ds.name, ds.info.task)
                          for s, q in zip(ds.queries, ds.query_ids, strict=True)]
            if r.sides in ("target", "both"):
                sides += [(s, f"{ds.name} candidate {c}", "target", ds.name, ds.info.task)
                          for s, c in zip(ds.candidates, ds.candidate_ids, strict=True)]
    if not r.pairs and not r.eval_root:
        raise ConfigError("nothing to reason about: set reason.pairs or reason.eval_root (--pairs / --eval)")
    rows, seen = [], set()
    for side, name, role, dataset, task in sides:
        template = _template(cfg, task)
        try:
            digest = content_hash(side, name)
        except MediaError as exc:
            errors.append({"name": name, "stage": "read", "reason": exc.reason})
            continue
        key = record_key(digest, template.id, reasoner)
        if key in seen:
            continue
        seen.add(key)
        rows.append({"key": key, "content_hash": digest, "template": template.id, "template_name": template.name,
                     "reasoner": reasoner, "name": name, "role": role, "dataset": dataset,
                     "side": json.dumps(side.to_dict())})
    return rows, errors


class ReasonBatch:
    """``map_batches`` callable: work rows -> result rows (ECR fields, or ok=False with the error)."""

    def __init__(self, config: dict[str, Any]):
        self.cfg = OmniretConfig.model_validate(config)
        self._reasoner: Any = None

    @property
    def reasoner(self) -> Any:
        if self._reasoner is None:
            from omniret.reasoning.reasoner import Reasoner

            self._reasoner = Reasoner.from_config(self.cfg.reason, self.cfg.media)
        return self._reasoner

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from omniret.reasoning.reasoner import Request

        rows = _rows(batch)
        requests, outcomes = [], {}
        for i, row in enumerate(rows):
            try:
                item = Side.from_dict(json.loads(row["side"])).to_item(name=row["name"])
                requests.append((i, Request(item, get_reason_template(row["template_name"]), row["key"])))
            except (ValueError, KeyError) as exc:
                outcomes[i] = MediaError(row["name"], f"unreadable side: {exc}")
        if requests:
            for (i, _), outcome in zip(requests, self.reasoner.generate([r for _, r in requests]), strict=True):
                outcomes[i] = outcome
        out = []
        for i, row in enumerate(rows):
            result = {k: v for k, v in row.items() if k != "side"}
            outcome = outcomes[i]
            if isinstance(outcome, MediaError):
                result |= {"ok": False, "error": outcome.reason, **{k: None for k in _RESULT_FIELDS}}
            else:
                result |= {"ok": True, "error": "", **{k: getattr(outcome, k) for k in _RESULT_FIELDS}}
            out.append(result)
        return _columns(out)


def _rows(batch: dict[str, Any]) -> list[dict[str, Any]]:
    names = list(batch)
    return [{k: _plain(batch[k][i]) for k in names} for i in range(len(batch[names[0]]))] if names else []


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _columns(rows: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    return {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]} if rows else {}


def resolved(cfg: OmniretConfig) -> OmniretConfig:
    """A copy whose reasoner checkpoint is an absolute path (built here if tiny), for remote actors."""
    from omniret.models.backbone import checkpoint_path

    out = cfg.model_copy(deep=True)
    out.reason.model.path = str(checkpoint_path(cfg.reason.model).resolve())
    return out


def run_reasoning(cfg: OmniretConfig) -> ReasonSummary:
    """Run the ECR job (see the module docstring); returns what it did."""
    from omniret.reasoning.reasoner import reasoner_id

    if cfg.reason.engine == "vllm":
        from omniret.reasoning.vllm_engine import require_vllm

        require_vllm()  # at start, before any work: a clear error when vLLM is absent
    cfg = resolved(cfg)
    out = Path(cfg.reason.out)
    summary = ReasonSummary(out)
    rows, summary.errors = work_rows(cfg, reasoner_id(cfg.reason))
    summary.items = len(rows)
    writer = EcrWriter(out)
    done = done_keys(writer.path)
    todo = [row for row in rows if row["key"] not in done]
    summary.already_done = len(rows) - len(todo)
    log.info("reasoning: %d records wanted, %d stored, %d to generate", len(rows), summary.already_done, len(todo))
    if todo:
        for batch in _stream(cfg, todo):
            _store(_rows(batch), writer, summary)
    write_errors(out, summary.errors)
    return summary


def _store(results: list[dict[str, Any]], writer: EcrWriter, summary: ReasonSummary) -> None:
    good = []
    for row in results:
        if not row.pop("ok"):
            summary.errors.append({"name": row["name"], "stage": "reason", "reason": row["error"]})
            continue
        row.pop("error")
        row.pop("template_name")
        good.append({**row, "source": "reasoner"})
    summary.written += writer.append(good)
    summary.truncated += sum(bool(r["truncated"]) for r in good)


def _stream(cfg: OmniretConfig, rows: list[dict[str, Any]]):
    if cfg.reason.engine == "vllm":
        from omniret.reasoning.vllm_engine import stream_vllm

        return stream_vllm(cfg, rows)
    return _stream_ray(cfg, rows) if cfg.reason.ray else _stream_local(cfg, rows)


def _stream_local(cfg: OmniretConfig, rows: list[dict[str, Any]]):
    udf = ReasonBatch(cfg.model_dump())
    size = cfg.reason.batch_rows
    for start in range(0, len(rows), size):
        yield udf(_columns(rows[start:start + size]))


def _stream_ray(cfg: OmniretConfig, rows: list[dict[str, Any]]):
    import ray.data

    from omniret.cluster import ensure_ray

    ensure_ray(cfg.reason.ray_num_cpus)
    ray.data.DataContext.get_current().enable_progress_bars = False
    r = cfg.reason
    ds = ray.data.from_items(rows).map_batches(
        ReasonBatch, fn_constructor_kwargs={"config": cfg.model_dump()}, batch_size=r.batch_rows,
        batch_format="numpy", compute=ray.data.ActorPoolStrategy(min_size=1, max_size=r.actors),
        num_gpus=r.num_gpus or None)
    yield from ds.iter_batches(batch_size=None, batch_format="numpy")


def apply_sources(cfg: OmniretConfig, pairs: list[Path] | None, eval_root: Path | None) -> OmniretConfig:
    """``--pairs`` / ``--eval`` command-line sources in place of ``reason.pairs`` / ``reason.eval_root``."""
    if pairs:
        cfg.reason.pairs = [str(p) for p in pairs]
    if eval_root:
        cfg.reason.eval_root = str(eval_root)
    return cfg


TEACHER_ID = "teacher"


def run_teacher(cfg: OmniretConfig) -> ReasonSummary:
    """Teacher traces for generated data: the same work rows and store as :func:`run_reasoning`, with the
    generator's scene notes (``data/synthetic/teacher.py``) in place of a model; reasoner id
    ``teacher``, records labelled ``source: teacher``. Items the generator did not note are errors."""
    from omniret.data.synthetic.teacher import Notes, teacher_trace

    out = Path(cfg.reason.out)
    summary = ReasonSummary(out)
    rows, summary.errors = work_rows(cfg, TEACHER_ID)
    summary.items = len(rows)
    writer = EcrWriter(out)
    done = done_keys(writer.path)
    notes = Notes([*cfg.reason.pairs, *([cfg.reason.eval_root] if cfg.reason.eval_root else [])])
    records = []
    for row in rows:
        if row["key"] in done:
            summary.already_done += 1
            continue
        side = Side.from_dict(json.loads(row["side"]))
        text = teacher_trace(side, row["template_name"], notes)
        if text is None:
            summary.errors.append({"name": row["name"], "stage": "teacher",
                                   "reason": "no generator notes for its media (not a generated item)"})
            continue
        think, _, rest = text.partition("</think>")
        records.append({**{k: v for k, v in row.items() if k not in ("side", "template_name")},
                        "text": text, "think": think.removeprefix("<think>").strip(), "summary": rest.strip(),
                        "closed": True, "truncated": False, "new_tokens": 0, "source": "teacher"})
    summary.written = writer.append(records)
    write_errors(out, summary.errors)
    return summary

"""One pair schema for every stage: a query, its positive(s), explicit negatives, dataset and task group.

A :class:`Side` is one query or document: instruction, text, images, a video (or a clip of one, or
a folder of frames) and a PDF page, any mix. Media are paths, relative to a root or absolute;
:meth:`Side.to_item` resolves them into an :class:`omniret.items.Item`. A :class:`Pair` adds the
dataset it comes from, its task group (one of the seven RzenEmbed groups in :data:`TASK_GROUPS`,
whose position is the task id a per-task temperature uses) and free-form ``meta``. Optional
``teacher_scores`` are a reranker's logits for ``[positives[0], *negatives]`` (distillation).

``Pair.to_dict`` / ``Pair.from_dict`` define the jsonl row; ``from_dict`` checks every field and
raises :class:`SchemaError` saying what is wrong. Each side's ``modality`` is written out (e.g.
``"image+text"``) and, when a row carries one, checked against the side's content.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omniret.errors import OmniretError
from omniret.items import Item, PageRef, VideoRef

#: The seven task groups of RzenEmbed (arXiv 2510.27350 §3.4.3); the index is the task id.
TASK_GROUPS = ("image_classification", "image_qa", "image_retrieval", "image_grounding",
               "document_retrieval", "video_retrieval", "video_qa")
#: Modalities in their canonical order; ``Side.flags`` follows it.
MODALITIES = ("text", "image", "video", "page")

_SIDE_KEYS = {"instruction", "text", "images", "video", "page", "modality", "reasoning"}
_PAIR_KEYS = {"id", "dataset", "task", "query", "positives", "negatives", "meta", "teacher_scores"}


class SchemaError(OmniretError, ValueError):
    """A row or side that does not fit the pair schema."""


@dataclass
class Side:
    """One query or document. Image entries are paths or encoded bytes; ``video`` may be a frame folder."""

    text: str | None = None
    images: list[str | bytes] = field(default_factory=list)
    video: VideoRef | None = None
    page: PageRef | None = None
    instruction: str | None = None
    reasoning: str | None = None  # embedding-centric reasoning (ECR) rendered after the text

    @property
    def flags(self) -> tuple[bool, bool, bool, bool]:
        """Presence of (text, image, video, page)."""
        return (bool(self.text and self.text.strip()), bool(self.images), self.video is not None,
                self.page is not None)

    @property
    def modality(self) -> str:
        """``"+"``-joined modalities present, e.g. ``"image+text"``; ``""`` for an empty side."""
        return "+".join(sorted(m for m, on in zip(MODALITIES, self.flags, strict=True) if on))

    def media_paths(self) -> list[str]:
        paths = [str(p) for p in self.images if not isinstance(p, bytes)]
        if self.video is not None:
            paths.append(str(self.video.path))
        if self.page is not None and not isinstance(self.page.path, bytes):
            paths.append(str(self.page.path))
        return paths

    def key(self) -> str:
        """A string identifying the content (used to deduplicate candidates)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_item(self, root: str | Path | None = None, name: str | None = None) -> Item:
        """The :class:`Item` to embed, with relative media paths resolved against ``root``."""
        video = page = None
        if self.video is not None:
            video = VideoRef(_resolve(self.video.path, root), self.video.start, self.video.end)
        if self.page is not None:
            page = PageRef(_resolve(self.page.path, root), self.page.page)
        return Item(text=self.text, images=[_resolve(p, root) for p in self.images], video=video, page=page,
                    instruction=self.instruction, name=name, reasoning=self.reasoning)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.instruction is not None:
            out["instruction"] = self.instruction
        if self.text is not None:
            out["text"] = self.text
        if self.images:
            out["images"] = [{"b64": base64.b64encode(p).decode()} if isinstance(p, bytes) else str(p)
                             for p in self.images]
        if self.video is not None:
            out["video"] = {k: v for k, v in (("path", str(self.video.path)), ("start", self.video.start),
                                               ("end", self.video.end)) if v is not None}
        if self.page is not None:
            out["page"] = {"path": str(self.page.path), "page": self.page.page}
        out["modality"] = self.modality
        if self.reasoning is not None:
            out["reasoning"] = self.reasoning
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "side") -> Side:
        if not isinstance(data, dict):
            raise SchemaError(f"{where}: expected an object, got {type(data).__name__}")
        unknown = set(data) - _SIDE_KEYS
        if unknown:
            raise SchemaError(f"{where}: unknown field(s) {sorted(unknown)}; expected some of {sorted(_SIDE_KEYS)}")
        side = cls(text=_opt_str(data.get("text"), f"{where}.text"),
                   instruction=_opt_str(data.get("instruction"), f"{where}.instruction"),
                   images=_images(data.get("images"), where), video=_video(data.get("video"), where),
                   page=_page(data.get("page"), where),
                   reasoning=_opt_str(data.get("reasoning"), f"{where}.reasoning"))
        if not side.modality:
            raise SchemaError(f"{where}: empty: no text, image, video or page")
        declared = data.get("modality")
        if declared is not None and _canon(declared) != side.modality:
            raise SchemaError(f"{where}: modality says {declared!r} but the content is {side.modality!r}")
        return side


@dataclass
class Pair:
    """A query with at least one positive, optional explicit negatives, its dataset and task group."""

    query: Side
    positives: list[Side]
    negatives: list[Side] = field(default_factory=list)
    dataset: str = ""
    task: str = ""
    id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    #: Teacher (reranker) logits of ``[positives[0], *negatives]``, in that order; written by score-pairs.
    teacher_scores: list[float] | None = None

    @property
    def task_id(self) -> int:
        return TASK_GROUPS.index(self.task)

    def to_items(self, root: str | Path | None = None) -> tuple[Item, list[Item], list[Item]]:
        name = self.id or self.dataset or "pair"
        return (self.query.to_item(root, f"{name} query"),
                [s.to_item(root, f"{name} positive {i}") for i, s in enumerate(self.positives)],
                [s.to_item(root, f"{name} negative {i}") for i, s in enumerate(self.negatives)])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "dataset": self.dataset, "task": self.task,
                               "query": self.query.to_dict(), "positives": [s.to_dict() for s in self.positives],
                               "negatives": [s.to_dict() for s in self.negatives]}
        if self.meta:
            out["meta"] = self.meta
        if self.teacher_scores is not None:
            out["teacher_scores"] = list(self.teacher_scores)
        return out

    @classmethod
    def from_dict(cls, data: Any, dataset: str | None = None, task: str | None = None) -> Pair:
        """Validate a row; ``dataset`` / ``task`` fill in fields the row leaves out."""
        if not isinstance(data, dict):
            raise SchemaError(f"expected a JSON object, got {type(data).__name__}")
        unknown = set(data) - _PAIR_KEYS
        if unknown:
            raise SchemaError(f"unknown field(s) {sorted(unknown)}; expected some of {sorted(_PAIR_KEYS)}")
        positives = data.get("positives")
        if not isinstance(positives, list) or not positives:
            raise SchemaError("positives: needs a non-empty list")
        negatives = data.get("negatives") or []
        if not isinstance(negatives, list):
            raise SchemaError("negatives: expected a list")
        meta = data.get("meta") or {}
        if not isinstance(meta, dict):
            raise SchemaError("meta: expected an object")
        return cls(query=Side.from_dict(data.get("query"), "query"),
                   positives=[Side.from_dict(s, f"positives[{i}]") for i, s in enumerate(positives)],
                   negatives=[Side.from_dict(s, f"negatives[{i}]") for i, s in enumerate(negatives)],
                   dataset=check_dataset(data.get("dataset") or dataset),
                   task=check_task(data.get("task") or task), id=_opt_str(data.get("id"), "id"), meta=meta,
                   teacher_scores=_teacher_scores(data.get("teacher_scores"), len(negatives)))


def _teacher_scores(value: Any, negatives: int) -> list[float] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise SchemaError(f"teacher_scores: expected a list of finite numbers, got {value!r:.60}")
    if len(value) != 1 + negatives:
        raise SchemaError(f"teacher_scores: {len(value)} scores for 1 positive + {negatives} negatives")
    return [float(v) for v in value]


def check_task(task: Any) -> str:
    if task not in TASK_GROUPS:
        raise SchemaError(f"task {task!r} is not one of the task groups {list(TASK_GROUPS)}")
    return task


def check_dataset(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise SchemaError("dataset: needs a non-empty name")
    return name


def write_pairs(path: str | Path, pairs: Iterable[Pair]) -> int:
    """Write ``pairs`` as jsonl (one row per pair, keys in a fixed order); returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as f:
        for pair in pairs:
            f.write(json.dumps(pair.to_dict(), ensure_ascii=False) + "\n")
            count += 1
    return count


def _resolve(path: str | Path | bytes, root: str | Path | None) -> str | bytes:
    if isinstance(path, bytes) or root is None or Path(path).is_absolute():
        return path if isinstance(path, bytes) else str(path)
    return str(Path(root) / path)


def _canon(modality: Any) -> str:
    if not isinstance(modality, str):
        return repr(modality)
    return "+".join(sorted(part.strip() for part in modality.split("+") if part.strip()))


def _opt_str(value: Any, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise SchemaError(f"{where}: expected a string, got {type(value).__name__}")


def _images(value: Any, where: str) -> list[str | bytes]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise SchemaError(f"{where}.images: expected a list of paths")
    out: list[str | bytes] = []
    for i, entry in enumerate(value):
        if isinstance(entry, str) and entry:
            out.append(entry)
        elif isinstance(entry, dict) and isinstance(entry.get("b64"), str):
            out.append(base64.b64decode(entry["b64"]))
        else:
            raise SchemaError(f"{where}.images[{i}]: expected a path or {{'b64': ...}}, got {entry!r:.60}")
    return out


def _video(value: Any, where: str) -> VideoRef | None:
    if value is None:
        return None
    if isinstance(value, str) and value:
        return VideoRef(value)
    if isinstance(value, dict) and isinstance(value.get("path"), str) and value["path"]:
        extra = set(value) - {"path", "start", "end"}
        if extra:
            raise SchemaError(f"{where}.video: unknown field(s) {sorted(extra)}")
        start, end = value.get("start"), value.get("end")
        for name, t in (("start", start), ("end", end)):
            if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0):
                raise SchemaError(f"{where}.video.{name}: expected seconds >= 0, got {t!r}")
        if start is not None and end is not None and start >= end:
            raise SchemaError(f"{where}.video: start {start} is not before end {end}")
        return VideoRef(value["path"], start, end)
    raise SchemaError(f"{where}.video: expected a path or {{'path', 'start', 'end'}}, got {value!r:.60}")


def _page(value: Any, where: str) -> PageRef | None:
    if value is None:
        return None
    if isinstance(value, dict) and isinstance(value.get("path"), str) and value["path"]:
        page = value.get("page", 0)
        if isinstance(page, bool) or not isinstance(page, int) or page < 0:
            raise SchemaError(f"{where}.page.page: expected a 0-based page number, got {page!r}")
        return PageRef(value["path"], page)
    raise SchemaError(f"{where}.page: expected {{'path': ..., 'page': n}}, got {value!r:.60}")

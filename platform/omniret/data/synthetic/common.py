"""What every generated task shares: the example record, the media writer, the per-task context."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from omniret.data.schema import Side
from omniret.data.synthetic.scenes import Combo, SceneMaker


@dataclass
class Example:
    """One query with its positive and negatives (hardest first), before it is written in some layout."""

    query: Side
    positive: Side
    negatives: list[Side]
    meta: dict[str, Any] = field(default_factory=dict)


class MediaWriter:
    """Writes media files of one task and split under ``root / media / <task>``; returns root-relative paths.

    Files are named by a counter (or a caller-given key, written once), so a run is byte-identical
    to another run with the same arguments.
    """

    def __init__(self, root: Path, task: str):
        self.root, self.folder = root, Path("media") / task
        (root / self.folder).mkdir(parents=True, exist_ok=True)
        self.count = 0
        self.known: dict[str, str] = {}
        self.notes: dict[str, Any] = {}  # rel path -> what the file shows (teacher traces, teacher.py)

    def _name(self, suffix: str, key: str | None) -> tuple[str, bool]:
        if key is not None and key in self.known:
            return self.known[key], False
        self.count += 1
        rel = str(self.folder / f"{self.count:05d}{suffix}")
        if key is not None:
            self.known[key] = rel
        return rel, True

    def image(self, picture: Image.Image, key: str | None = None, note: Any = None) -> str:
        rel, new = self._name(".png", key)
        if new:
            picture.save(self.root / rel, format="PNG")
        if note is not None:
            self.notes[rel] = note
        return rel

    def file(self, suffix: str, write: Callable[[Path], Any], key: str | None = None, note: Any = None) -> str:
        rel, new = self._name(suffix, key)
        if new:
            write(self.root / rel)
        if note is not None:
            self.notes[rel] = note
        return rel


@dataclass
class Ctx:
    """Everything a task builder needs for one split."""

    rng: random.Random
    scenes: SceneMaker
    media: MediaWriter
    split: str  # "train" | "eval"
    negatives: int  # how many negatives to make per example (hardest first)
    video_size: int
    video_frames: int
    pages_per_doc: int
    pool: list[Side] = field(default_factory=list)  # global candidate pool (documents), when a task has one

    @property
    def held(self) -> list[Combo]:
        return self.scenes.held_combos


@dataclass(frozen=True)
class TaskSpec:
    """A generated dataset: its name, task group, MMEB meta-task, evaluation layout and builder."""

    name: str
    task: str
    meta_task: str
    layout: str  # "local" (candidate lists), "video" (global pool of videos), "beir" (documents)
    build: Callable[[Ctx, int], list[Example]]
    query_instruction: str
    candidate_instruction: str | None = None


def fill(ctx: Ctx, makers: list[Callable[[], Side]], extra: Callable[[], Side]) -> list[Side]:
    """Up to ``ctx.negatives`` negatives: from ``makers`` in order (hardest first), then from ``extra()``.

    Makers are called only while more negatives are needed, so no media file is written in vain;
    a side whose content repeats an earlier one is dropped.
    """
    out: list[Side] = []
    keys: set[str] = set()
    queue = list(makers)
    budget = len(queue) + 50 * max(1, ctx.negatives)
    while len(out) < ctx.negatives and budget > 0:
        budget -= 1
        side = queue.pop(0)() if queue else extra()
        if side.key() not in keys:
            keys.add(side.key())
            out.append(side)
    return out

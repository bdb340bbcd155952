"""Teacher traces for the generated benchmark: the ECR a strong teacher would write, from the scene itself.

There is no 72B teacher here. The generator knows what each file shows, so it records it while it
writes the media (``MediaWriter`` notes: a picture's objects with colour, count and position, a
clip's motion, a PDF's page texts) in ``<split>/teacher_notes.yaml`` (YAML: the pair readers take
every json file of a folder). :func:`teacher_trace` turns a side and those notes into
``<think>facts</think> summary``, in the wording of the side's task template; the records are
labelled ``source: teacher`` by the job that writes them (``omniret reason --teacher``).

The wording is ours (the paper's teacher is a model); it states only facts the scene holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from omniret.data.schema import Side
from omniret.data.synthetic.scenes import COUNT_WORDS, PLURALS, POSITION_NAMES, Scene

NOTES_FILE = "teacher_notes.yaml"


def describe_scene(scene: Scene, crop_of: tuple[int, int] | None = None) -> str:
    """Objects grouped by colour and shape, with counts and grid positions (a crop: its own object)."""
    objects = [o for o in scene if crop_of is None or o.cell == crop_of]
    if not objects:
        return "an empty picture"
    groups: dict[tuple[str, str], list[str]] = {}
    for o in sorted(objects, key=lambda o: (o.color, o.shape, o.cell)):
        groups.setdefault(o.combo, []).append(POSITION_NAMES[o.cell])
    parts = []
    for (color, shape), where in groups.items():
        n = len(where)
        name = f"{color} {shape}" if n == 1 else f"{color} {PLURALS[shape]}"
        count = "one" if n == 1 else COUNT_WORDS[n] if n < len(COUNT_WORDS) else str(n)
        parts.append(f"{count} {name} ({', '.join(where)})" if crop_of is None else f"a {name}")
    return "; ".join(parts) if crop_of is None else parts[0] + " filling the cut-out"


def write_notes(folder: Path, notes: dict[str, Any]) -> Path:
    path = Path(folder) / NOTES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(sorted(notes.items())), sort_keys=False, allow_unicode=True),
                    encoding="utf-8")
    return path


class Notes:
    """Notes of one or more generated folders, by absolute media path."""

    def __init__(self, folders: Iterable[str | Path]):
        self.by_path: dict[str, Any] = {}
        for folder in folders:
            folder = Path(folder)
            for candidate in (folder, *folder.parents[:2]):  # a dataset file or folder below the split
                path = candidate / NOTES_FILE
                if path.is_file():
                    for rel, note in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).items():
                        self.by_path[str((candidate / rel).resolve())] = note
                    break

    def get(self, path: str | Path) -> Any:
        return self.by_path.get(str(Path(path).resolve()))


def _facts(side: Side, notes: Notes) -> list[str] | None:
    """What the side's media show; None when any medium has no note (not a generated file)."""
    facts = []
    for image in side.images:
        note = None if isinstance(image, bytes) else notes.get(image)
        if note is None:
            return None
        facts.append(f"The picture shows {note}.")
    if side.video is not None:
        note = notes.get(side.video.path)
        if note is None:
            return None
        facts.append(f"The clip shows {note}; it keeps going that way, so next it leaves the frame on that side.")
    if side.page is not None:
        pages = None if isinstance(side.page.path, bytes) else notes.get(side.page.path)
        if not pages or side.page.page >= len(pages):
            return None
        facts.append(f"Page {side.page.page + 1} says: {' '.join(str(pages[side.page.page]).split())}")
    return facts


def teacher_trace(side: Side, template: str, notes: Notes) -> str | None:
    """``<think>...</think> summary`` for ``side`` under reasoner template ``template`` (qa, visdoc,
    grounding, retrieval, video); None when the side shows media the generator did not note."""
    facts = _facts(side, notes)
    text = " ".join((side.text or "").split())
    if facts is None or not (facts or text):
        return None
    steps = list(facts)
    if text:
        steps.append(f"The text says: {text}" + ("" if text[-1] in ".?!" else "."))
    if facts and template == "qa" and text:
        steps.append("The answer follows from the objects, counts and positions above.")
    elif facts and template == "grounding":
        steps.append("The referred object is the one the text names; its neighbours are the other objects.")
    summary = facts[0] if facts else text
    if template == "visdoc" and side.page is not None:
        summary = facts[-1].split(": ", 1)[1].split(".")[0] + "."
    return f"<think>{' '.join(steps)}</think> {summary}".strip()

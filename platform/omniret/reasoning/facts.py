"""Fact recall: how many of the facts a teacher's ECR states does another reasoner's ECR state too.

Facts are read from text with the generated benchmark's vocabulary (``data/synthetic/scenes.py``),
as (kind, value) pairs, after lower-casing and splitting into words (hyphenated names stay whole):

- ``object``: (count, colour, shape) from ``<count> <colour> <shape>``, e.g. "two red circles"; "a" and
  "an" count as one, digits as their word, plurals as the singular;
- ``colour`` and ``shape``: every colour and shape word;
- ``count``: every count word ("zero" .. "four") and every number;
- ``position``: every grid position name ("top-left", "top", ..., "centre", "bottom-right");
- ``motion``: the direction after "moving" ("moving left"); that word is then no position.

``fact_recall(teacher, student) = |F(teacher) ∩ F(student)| / |F(teacher)|`` (None when the teacher
states none): a set measure, so a fact stated twice counts once and facts the student adds cost
nothing. Words outside the vocabulary (a page's day names, site names) are not facts; the measure
covers what a scene shows, not free text (our definition; Think-Then-Embed reports no such figure).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omniret.data.synthetic.scenes import COLOR_NAMES, COUNT_WORDS, PLURALS, POSITION_NAMES
from omniret.media.synth import DIRECTIONS, SHAPES
from omniret.reasoning.ecr import parse_ecr
from omniret.reasoning.store import ECR_FILE, read_records

Fact = tuple[str, Any]

_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*|\d+")
_SINGULAR = {plural: shape for shape, plural in PLURALS.items()} | {s: s for s in SHAPES}
_COLOURS = frozenset(COLOR_NAMES)
_POSITIONS = frozenset(POSITION_NAMES.values())
_COUNTS = {w: w for w in COUNT_WORDS} | {"a": "one", "an": "one"}


def _count(word: str) -> str | None:
    if word.isdigit():
        n = int(word)
        return COUNT_WORDS[n] if n < len(COUNT_WORDS) else str(n)
    return _COUNTS.get(word)


def facts(text: str) -> set[Fact]:
    """The facts ``text`` states (see the module docstring)."""
    words = _WORD.findall((text or "").lower())
    out: set[Fact] = set()
    motion_at = set()
    for i, word in enumerate(words):
        if word == "moving" and i + 1 < len(words) and words[i + 1] in DIRECTIONS:
            out.add(("motion", words[i + 1]))
            motion_at.add(i + 1)
    for i, word in enumerate(words):
        if word in _COLOURS:
            out.add(("colour", word))
        if word in _SINGULAR:
            out.add(("shape", _SINGULAR[word]))
        if word.isdigit() or word in COUNT_WORDS:
            out.add(("count", _count(word)))
        if word in _POSITIONS and i not in motion_at:
            out.add(("position", word))
        count = _count(word)
        if count and i + 2 < len(words) and words[i + 1] in _COLOURS and words[i + 2] in _SINGULAR:
            out.add(("object", (count, words[i + 1], _SINGULAR[words[i + 2]])))
    return out


def fact_recall(teacher: str, student: str) -> float | None:
    """Share of the teacher's facts that the student states; None when the teacher states none."""
    wanted = facts(teacher)
    return len(wanted & facts(student)) / len(wanted) if wanted else None


@dataclass
class RecallReport:
    """Fact recall of a student's ECR records against a teacher's, matched by content and template."""

    items: int = 0  # records present in both, whose teacher text states at least one fact
    missing: int = 0  # teacher records the student has no record for
    recall: float = 0.0  # mean over items, the student's whole ECR text
    summary_recall: float = 0.0  # mean over items, the student's summary line only
    complete: float = 0.0  # share of items whose ECR text states every teacher fact
    closed: float = 0.0  # share of the student's records that closed </think>
    by_template: dict[str, dict[str, float]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"{self.items} items (teacher records without a student record: {self.missing}); closed "
               f"</think> {self.closed:.3f}; fact recall {self.recall:.3f} (ECR text), {self.summary_recall:.3f} "
               f"(summary); all facts stated {self.complete:.3f}"]
        out += [f"  {name}: {row['items']:.0f} items, recall {row['recall']:.3f}, summary {row['summary_recall']:.3f}"
                for name, row in sorted(self.by_template.items())]
        return out


def _records(path: str | Path, reasoner: str | None) -> dict[tuple[str, str], dict[str, Any]]:
    path = Path(path)
    out = {}
    for record in read_records(path / ECR_FILE if path.is_dir() else path):
        if reasoner is None or record["reasoner"] == reasoner:
            out[(record["content_hash"], record["template"].split("@")[0])] = record
    return out


def majority(teacher: dict[tuple[str, str], dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """A baseline student: for every item, the teacher's most frequent ECR of the item's template
    (what a reasoner that ignores its input does best), ties broken by first occurrence."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for (_, template), record in teacher.items():
        counts[template][record["text"]] += 1
    best = {template: c.most_common(1)[0][0] for template, c in counts.items()}
    return {key: {"text": best[key[1]], "summary": parse_ecr("", best[key[1]], hit_limit=False, new_tokens=0).summary,
                  "closed": True} for key in teacher}


def compare(teacher: str | Path, student: str | Path | None, teacher_reasoner: str | None = None,
            student_reasoner: str | None = None, roles: Iterable[str] = ("query", "target")) -> RecallReport:
    """Fact recall of ``student``'s ECR (file or folder) against ``teacher``'s, over records of ``roles``;
    ``student=None``: of the :func:`majority` baseline."""
    roles = set(roles)
    wanted = {k: r for k, r in _records(teacher, teacher_reasoner).items() if r.get("role") in roles}
    got = majority(wanted) if student is None else _records(student, student_reasoner)
    report = RecallReport()
    rows: dict[str, list[tuple[float, float]]] = defaultdict(list)
    closed = 0
    for key, record in wanted.items():
        mine = got.get(key)
        if mine is None:
            report.missing += 1
            continue
        full = fact_recall(record["text"], mine.get("text") or "")
        if full is None:
            continue
        rows[key[1]].append((full, fact_recall(record["text"], mine.get("summary") or "") or 0.0))
        closed += bool(mine.get("closed"))
    every = [row for values in rows.values() for row in values]
    if every:
        n = len(every)
        report.items = n
        report.recall = sum(r for r, _ in every) / n
        report.summary_recall = sum(s for _, s in every) / n
        report.complete = sum(r == 1.0 for r, _ in every) / n
        report.closed = closed / n
        report.by_template = {name: {"items": len(v), "recall": sum(r for r, _ in v) / len(v),
                                     "summary_recall": sum(s for _, s in v) / len(v)} for name, v in rows.items()}
    return report

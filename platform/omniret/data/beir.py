"""Load a BEIR-style retrieval folder: ``queries``, ``corpus`` and ``qrels`` tables, any of several layouts.

Each table may be a file (``queries.jsonl``, ``corpus.parquet``, ``qrels.tsv``, ...) or a folder of
shards (``queries/test-00000-of-00001.parquet``, as Hugging Face snapshots of the ViDoRe / VisRAG
sets lay them out; ``qrels/test.tsv`` as classic BEIR does). Field names accepted: ``query-id`` /
``query_id`` / ``_id``, ``query`` / ``text``; ``corpus-id`` / ``corpus_id`` / ``_id``; ``score``.
A corpus entry is a page image (``image`` as a path or parquet ``{bytes, path}``; the MMEB cache
``{corpus-id}.png`` next to the tables is preferred when present), a PDF page (``pdf`` + ``page``) or
text. Unusable rows are reported with file and row and skipped.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omniret.data.readers import DATA_SUFFIXES, RowProblem, iter_records, resolve_path
from omniret.data.schema import Side
from omniret.items import PageRef

_QID = ("query-id", "query_id", "qid", "_id", "id")
_CID = ("corpus-id", "corpus_id", "docid", "doc_id", "_id", "id")


@dataclass
class Beir:
    queries: dict[str, str] = field(default_factory=dict)  # query id -> text, in file order
    corpus: dict[str, Side] = field(default_factory=dict)  # corpus id -> document
    qrels: dict[str, dict[str, float]] = field(default_factory=dict)  # query id -> {corpus id: grade}
    files: list[str] = field(default_factory=list)
    problems: list[RowProblem] = field(default_factory=list)


def is_beir_folder(folder: Path) -> bool:
    return all(_table_files(folder, name) for name in ("queries", "corpus", "qrels"))


def load_beir(folder: str | Path) -> Beir:
    folder = Path(folder)
    out = Beir()
    for name in ("queries", "corpus", "qrels"):
        if not _table_files(folder, name):
            raise FileNotFoundError(f"{folder}: no {name} table ({name}.jsonl / .parquet / .tsv or {name}/)")
    for path, number, row in _rows(folder, "queries", out):
        qid, text = _first(row, _QID), _first(row, ("query", "text"))
        if qid is None or not isinstance(text, str) or not text.strip():
            out.problems.append(RowProblem(str(path), number, "query row needs an id and a non-empty query"))
            continue
        out.queries[str(qid)] = text
    roots = [folder, folder / "images", folder.parent, folder.parent.parent]
    for path, number, row in _rows(folder, "corpus", out):
        cid = _first(row, _CID)
        side = None if cid is None else _corpus_side(row, str(cid), folder, roots)
        if side is None:
            out.problems.append(RowProblem(str(path), number, "corpus row needs an id and an image, pdf or text"))
            continue
        out.corpus[str(cid)] = side
    for path, number, row in _rows(folder, "qrels", out):
        qid, cid, score = _first(row, _QID[:3]), _first(row, _CID[:4]), row.get("score", 1)
        try:
            grade = float(score)
        except (TypeError, ValueError):
            grade = None
        if qid is None or cid is None or grade is None:
            out.problems.append(RowProblem(str(path), number, "qrels row needs query-id, corpus-id, score"))
            continue
        out.qrels.setdefault(str(qid), {})[str(cid)] = grade
    return out


def _corpus_side(row: dict[str, Any], cid: str, folder: Path, roots: list[Path]) -> Side | None:
    for base in (folder, folder / "images"):
        cached = base / f"{cid}.png"
        if cached.is_file():
            return Side(images=[str(cached)])
    image = row.get("image") or row.get("image_path")
    if isinstance(image, dict):
        image = bytes(image["bytes"]) if image.get("bytes") else image.get("path")
    if isinstance(image, bytes):
        return Side(images=[image])
    if isinstance(image, str) and image:
        return Side(images=[resolve_path(image, roots)])
    if row.get("pdf"):
        return Side(page=PageRef(resolve_path(str(row["pdf"]), roots), int(row.get("page", 0))))
    text = " ".join(str(row[k]) for k in ("title", "text") if row.get(k))
    return Side(text=text) if text.strip() else None


def _rows(folder: Path, name: str, out: Beir):
    for path in _table_files(folder, name):
        out.files.append(str(path))
        if path.suffix == ".tsv":
            with path.open(encoding="utf-8") as f:
                for number, row in enumerate(csv.DictReader(f, delimiter="\t"), start=2):
                    yield path, number, row
            continue
        for number, row, reason in iter_records(path):
            if row is None:
                out.problems.append(RowProblem(str(path), number, reason or "unreadable row"))
            else:
                yield path, number, row


def _table_files(folder: Path, name: str) -> list[Path]:
    direct = [folder / f"{name}{suffix}" for suffix in (*DATA_SUFFIXES, ".tsv")]
    found = [p for p in direct if p.is_file()]
    if found:
        return found[:1]
    sub = folder / name
    if sub.is_dir():
        return sorted(p for p in sub.rglob("*") if p.suffix in (*DATA_SUFFIXES, ".tsv") and p.is_file())
    return []


def _first(row: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if row.get(key) not in (None, ""):
            return row[key]
    return None

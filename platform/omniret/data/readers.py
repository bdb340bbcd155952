"""Read training pairs from jsonl / json / parquet files in any of the supported row formats.

Row formats, detected per row:

- native: the :mod:`omniret.data.schema` pair (``query``, ``positives``, ``negatives``, ...);
- MMEB-train: ``qry``, ``qry_image_path``, ``pos_text``, ``pos_image_path``, ``neg_text``,
  ``neg_image_path`` (strings or lists); the ``<|image_1|>`` placeholder is removed from the text and
  stands for the image at the matching path (a placeholder without a path is a broken row);
- MMEB-V2 video: ``caption`` with ``video`` / ``video_path`` / ``frame_dir`` (a folder of frames);
- MMEB-V2 visual documents: ``query`` with ``image`` / ``image_path`` (a path or parquet
  ``{bytes, path}``) or ``pdf`` + ``page``; BEIR folders (queries / corpus / qrels) via
  :func:`read_beir_pairs`;
- text pairs: ``query`` and ``positive`` strings, optional ``negatives`` (a string or a list of
  strings) and ``instruction`` (the query's); the rows of a text-only training stage.

Relative media paths are resolved against ``root`` (default: the folder given, the file's folder and
its parent, first match wins). A row that cannot be used is reported with its file and line (row
number for parquet), logged and skipped; reading goes on. :attr:`ReadResult.problems` keeps them.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omniret.data import catalog
from omniret.data.schema import Pair, SchemaError, Side, check_dataset, check_task
from omniret.items import PageRef, VideoRef

log = logging.getLogger(__name__)

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
_PLACEHOLDER = re.compile(r"<\|image_\d+\|>|<image>")
_SHARD = re.compile(r"(^|[-_])\d{5}-of-\d{5}$|^(train|test|val|validation|data)$")
_LOGGED_PROBLEMS = 20


@dataclass
class RowProblem:
    """A row that was skipped: where it is and why."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class ReadResult:
    pairs: list[Pair] = field(default_factory=list)
    problems: list[RowProblem] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return len(self.problems)

    def summary(self) -> str:
        datasets = sorted({p.dataset for p in self.pairs})
        return (f"read {len(self.pairs)} pairs of {len(datasets)} dataset(s) from {len(self.files)} file(s); "
                f"skipped {self.skipped} broken row(s)")


def data_files(source: str | Path) -> list[Path]:
    """The data files of ``source``: the file itself, or every jsonl/json/parquet file below a folder."""
    source = Path(source)
    if source.is_file():
        return [source]
    if source.is_dir():
        return sorted(p for p in source.rglob("*") if p.suffix in DATA_SUFFIXES and p.is_file())
    raise FileNotFoundError(f"no such file or folder: {source}")


def iter_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """Yield (line or row number, record, None) or (number, None, reason) for an unreadable row."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        number = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=512):
            for record in batch.to_pylist():
                number += 1
                yield number, record, None
        return
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = data if isinstance(data, list) else [data]
        for number, record in enumerate(rows, start=1):
            yield (number, record, None) if isinstance(record, dict) else (number, None, "not a JSON object")
        return
    with path.open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, None, f"invalid JSON: {exc.msg} (column {exc.colno})"
                continue
            yield (number, record, None) if isinstance(record, dict) else (number, None, "not a JSON object")


def read_pairs(source: str | Path, *, root: str | Path | None = None, dataset: str | None = None,
               task: str | None = None, check_media: bool = True, limit: int | None = None) -> ReadResult:
    """Read every pair under ``source`` (a file or a folder); broken rows are reported and skipped.

    ``dataset`` / ``task`` apply to rows that do not name theirs. Without ``dataset`` a file's
    dataset is its name, or its folder's name for shard files (``train-00000-of-00001.parquet``)
    and files in a sub-folder of ``source`` (MMEB-train's ``<dataset>/*.parquet``).
    """
    source = Path(source)
    result = ReadResult()
    for path in data_files(source):
        result.files.append(str(path))
        roots = _roots(source, path, root)
        name = dataset or _dataset_name(source, path)
        for number, record, reason in iter_records(path):
            if limit is not None and len(result.pairs) >= limit:
                break
            try:
                if record is None:
                    raise SchemaError(reason or "unreadable row")
                pair = row_to_pair(record, dataset=name, task=task, roots=roots)
                if check_media:
                    _check_media(pair)
            except (SchemaError, ValueError, TypeError, KeyError) as exc:
                _report(result, RowProblem(str(path), number, str(exc)))
                continue
            if pair.id is None:
                pair.id = f"{pair.dataset}:{number}"
            result.pairs.append(pair)
    if result.skipped:
        log.warning("%s: skipped %d broken row(s)", source, result.skipped)
    log.info("%s: %s", source, result.summary())
    return result


def row_to_pair(row: dict[str, Any], *, dataset: str, task: str | None = None,
                roots: list[Path] | None = None) -> Pair:
    """Convert one row of any supported format into a :class:`Pair` (paths resolved against ``roots``)."""
    roots = roots or []
    if "positives" in row or isinstance(row.get("query"), dict):
        pair = Pair.from_dict(row, dataset=dataset, task=task or _catalog_task(row.get("dataset") or dataset))
        return _resolve_pair(pair, roots)
    if "qry" in row or "pos_text" in row or "pos_image_path" in row:
        return _mmeb_train(row, dataset, task, roots)
    if "caption" in row and any(k in row for k in ("video", "video_path", "frame_dir")):
        return _video_row(row, dataset, task, roots)
    if isinstance(row.get("query"), str) and any(k in row for k in ("image", "image_path", "pdf")):
        return _visdoc_row(row, dataset, task, roots)
    if "positive" in row and "query" in row:
        return _text_row(row, dataset, task)
    raise SchemaError(f"unrecognised row format with fields {sorted(row)[:12]}")


def read_beir_pairs(folder: str | Path, *, dataset: str | None = None, task: str = "document_retrieval",
                    min_score: float = 1.0) -> ReadResult:
    """Training pairs from a BEIR folder: each query with its corpus entries of grade >= ``min_score``."""
    from omniret.data.beir import load_beir

    folder = Path(folder)
    beir = load_beir(folder)
    result = ReadResult(files=beir.files, problems=list(beir.problems))
    name = dataset or folder.name
    for qid, text in beir.queries.items():
        graded = beir.qrels.get(qid, {})
        positives = [beir.corpus[c] for c, s in graded.items() if s >= min_score and c in beir.corpus]
        if not positives:
            _report(result, RowProblem(str(folder), 0, f"query {qid!r} has no relevant corpus entry"))
            continue
        result.pairs.append(Pair(Side(text=text), positives, dataset=name, task=check_task(task),
                                 id=f"{name}:{qid}"))
    return result


def resolve_path(path: str, roots: list[Path]) -> str:
    """``path`` made absolute against the first root under which it exists (else the first root)."""
    if not path or Path(path).is_absolute() or not roots:
        return path
    for base in roots:
        if (base / path).exists():
            return str(base / path)
    return str(roots[0] / path)


def _mmeb_train(row: dict[str, Any], dataset: str, task: str | None, roots: list[Path]) -> Pair:
    query = _mmeb_side(row.get("qry"), row.get("qry_image_path"), "qry", roots)
    if query is None:
        raise SchemaError("qry: empty query (no text and no image)")
    pos_texts, pos_paths = _as_list(row.get("pos_text")), _as_list(row.get("pos_image_path"))
    positives = [s for s in (_mmeb_side(t, p, f"pos[{i}]", roots)
                             for i, (t, p) in enumerate(_zip_longest(pos_texts, pos_paths))) if s]
    if not positives:
        raise SchemaError("pos_text / pos_image_path: no positive")
    neg_texts, neg_paths = _as_list(row.get("neg_text")), _as_list(row.get("neg_image_path"))
    negatives = [s for s in (_mmeb_side(t, p, f"neg[{i}]", roots)
                             for i, (t, p) in enumerate(_zip_longest(neg_texts, neg_paths))) if s]
    name = check_dataset(row.get("dataset") or dataset)
    return Pair(query, positives, negatives, dataset=name, task=_task(task, name, None),
                id=row.get("id") if isinstance(row.get("id"), str) else None)


def _mmeb_side(text: Any, image: Any, where: str, roots: list[Path]) -> Side | None:
    text = "" if text is None else text
    if not isinstance(text, str):
        raise SchemaError(f"{where}: text must be a string, got {type(text).__name__}")
    path = _image_path(image, where)
    has_placeholder = bool(_PLACEHOLDER.search(text))
    if has_placeholder and not path:
        raise SchemaError(f"{where}: text has an image placeholder but no image path")
    clean = _PLACEHOLDER.sub("", text).strip()
    if not clean and not path:
        return None
    images: list[str | bytes] = [path if isinstance(path, bytes) else resolve_path(path, roots)] if path else []
    return Side(text=clean or None, images=images)


def _video_row(row: dict[str, Any], dataset: str, task: str | None, roots: list[Path]) -> Pair:
    caption = row.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        raise SchemaError("caption: empty")
    raw = row.get("frame_dir") or row.get("video_path") or row.get("video")
    if not isinstance(raw, str) or not raw:
        raise SchemaError("video / frame_dir: expected a path")
    video = Side(video=VideoRef(resolve_path(raw, roots)), instruction=_str(row.get("tgt_inst")))
    name = check_dataset(row.get("dataset") or dataset)
    vid = row.get("video_id") or row.get("id")
    return Pair(Side(text=caption, instruction=_str(row.get("qry_inst"))), [video], dataset=name,
                task=_task(task, name, "video_retrieval"), id=f"{name}:{vid}" if vid else None)


def _visdoc_row(row: dict[str, Any], dataset: str, task: str | None, roots: list[Path]) -> Pair:
    query = row["query"].strip()
    if not query:
        raise SchemaError("query: empty")
    positive = _doc_side(row, ("image", "image_path"), "pdf", "page", roots, "positive")
    if positive is None:
        raise SchemaError("image / pdf: no document page")
    negative = _doc_side(row, ("neg_image", "neg_image_path"), "neg_pdf", "neg_page", roots, "negative")
    name = check_dataset(row.get("dataset") or dataset)
    qid = row.get("query-id") or row.get("query_id") or row.get("id")
    return Pair(Side(text=query), [positive], [negative] if negative else [], dataset=name,
                task=_task(task, name, "document_retrieval"), id=f"{name}:{qid}" if qid else None)


def _text_row(row: dict[str, Any], dataset: str, task: str | None) -> Pair:
    """A text pair: query, positive, optional negatives and query instruction, all plain strings."""
    def text(value: Any, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise SchemaError(f"{where}: expected a non-empty string, got {type(value).__name__} {value!r:.40}")
        return value.strip()

    negatives = row.get("negatives") or []
    negatives = [negatives] if isinstance(negatives, str) else negatives
    if not isinstance(negatives, list):
        raise SchemaError(f"negatives: expected a string or a list of strings, got {type(negatives).__name__}")
    instruction = row.get("instruction")
    name = check_dataset(row.get("dataset") or dataset)
    qid = row.get("id")
    # Text-only pairs are document retrieval with text documents (the closest of the task groups).
    return Pair(Side(text=text(row["query"], "query"),
                     instruction=text(instruction, "instruction") if instruction is not None else None),
                [Side(text=text(row["positive"], "positive"))],
                [Side(text=text(n, f"negatives[{i}]")) for i, n in enumerate(negatives)],
                dataset=name, task=_task(task, name, "document_retrieval"), id=f"{name}:{qid}" if qid else None)


def _doc_side(row: dict[str, Any], image_keys: tuple[str, ...], pdf_key: str, page_key: str,
              roots: list[Path], where: str) -> Side | None:
    for key in image_keys:
        if row.get(key):
            image = _image_path(row[key], f"{where} {key}")
            return Side(images=[image if isinstance(image, bytes) else resolve_path(image, roots)])
    if row.get(pdf_key):
        page = row.get(page_key, 0)
        if isinstance(page, bool) or not isinstance(page, int) or page < 0:
            raise SchemaError(f"{page_key}: expected a 0-based page number, got {page!r}")
        return Side(page=PageRef(resolve_path(str(row[pdf_key]), roots), page))
    return None


def _image_path(value: Any, where: str) -> str | bytes | None:
    """A path, parquet image struct ``{bytes, path}``, or nothing."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        if value.get("path"):
            return str(value["path"])
    if isinstance(value, list) and len(value) == 1:
        return _image_path(value[0], where)
    raise SchemaError(f"{where}: expected one image path, got {value!r:.60}")


def _resolve_pair(pair: Pair, roots: list[Path]) -> Pair:
    for side in [pair.query, *pair.positives, *pair.negatives]:
        side.images = [p if isinstance(p, bytes) else resolve_path(p, roots) for p in side.images]
        if side.video is not None:
            side.video.path = resolve_path(str(side.video.path), roots)
        if side.page is not None and not isinstance(side.page.path, bytes):
            side.page.path = resolve_path(str(side.page.path), roots)
    return pair


def _check_media(pair: Pair) -> None:
    for where, side in [("query", pair.query), *(("positive", s) for s in pair.positives),
                        *(("negative", s) for s in pair.negatives)]:
        for path in side.media_paths():
            if not Path(path).exists():
                raise SchemaError(f"{where}: media file not found: {path}")


def _task(task: str | None, dataset: str, default: str | None) -> str:
    chosen = task or _catalog_task(dataset) or default
    if chosen is None:
        raise SchemaError(f"dataset {dataset!r} is not a known MMEB dataset; pass its task group "
                          f"(task=...)")
    return check_task(chosen)


def _catalog_task(dataset: str | None) -> str | None:
    info = catalog.lookup(dataset) if dataset else None
    return info.task if info else None


def _roots(source: Path, path: Path, root: str | Path | None) -> list[Path]:
    if root is not None:
        return [Path(root)]
    candidates = [source if source.is_dir() else path.parent, path.parent, path.parent.parent]
    return list(dict.fromkeys(c.resolve() for c in candidates))


def _dataset_name(source: Path, path: Path) -> str:
    if source.is_dir() and path.parent != source:
        return path.relative_to(source).parts[0]
    stem = path.name.split(".")[0]
    return path.parent.name if _SHARD.search(stem) or stem.startswith(("diverse_instruction", "original")) \
        else stem


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _zip_longest(a: list[Any], b: list[Any]) -> list[tuple[Any, Any]]:
    n = max(len(a), len(b))
    return [(a[i] if i < len(a) else None, b[i] if i < len(b) else None) for i in range(n)]


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _report(result: ReadResult, problem: RowProblem) -> None:
    result.problems.append(problem)
    if len(result.problems) <= _LOGGED_PROBLEMS:
        log.warning("skipping %s", problem)
    elif len(result.problems) == _LOGGED_PROBLEMS + 1:
        log.warning("more broken rows follow; only the count is reported from here on")


def read_sources(sources: list[str], *, root: str | Path | None = None, check_media: bool = True) -> ReadResult:
    """Read every source (file or folder; a BEIR folder reads as document-retrieval pairs) into one result."""
    from omniret.data.beir import is_beir_folder

    total = ReadResult()
    for source in sources:
        part = (read_beir_pairs(source) if Path(source).is_dir() and is_beir_folder(Path(source))
                else read_pairs(source, root=root, check_media=check_media))
        total.pairs += part.pairs
        total.problems += part.problems
        total.files += part.files
    return total

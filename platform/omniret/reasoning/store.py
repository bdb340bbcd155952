"""ECR files: ``ecr.jsonl`` (one record per content hash + template + reasoner) and ``errors.jsonl``.

Records are appended one batch at a time and flushed, so a killed run loses at most the batch it was
writing; a torn last line is ignored when the file is read back, and the item it described is
simply generated again. A record's ``key`` is ``sha256(content_hash | template | reasoner)``.

The content hash of a :class:`~omniret.data.schema.Side` covers its instruction, text, page number,
clip bounds and the bytes of every media file (not their paths), so moved files keep their ECR and
an edited image gets a new one. Reading a file that is missing raises MediaError for that item.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omniret.data.schema import Side
from omniret.errors import MediaError

ECR_FILE = "ecr.jsonl"
ERRORS_FILE = "errors.jsonl"
_CHUNK = 1 << 20


def record_key(content_hash: str, template: str, reasoner: str) -> str:
    return hashlib.sha256(f"{content_hash}|{template}|{reasoner}".encode()).hexdigest()


def _file_digest(path: str | Path, name: str) -> str:
    digest = hashlib.sha256()
    try:
        if Path(path).is_dir():  # a folder of video frames: its files in name order
            for child in sorted(Path(path).iterdir()):
                if child.is_file():
                    digest.update(child.name.encode())
                    digest.update(_file_digest(child, name).encode())
            return digest.hexdigest()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(_CHUNK), b""):
                digest.update(block)
    except OSError as exc:
        raise MediaError(name, f"cannot read {path}: {exc.strerror or exc}") from exc
    return digest.hexdigest()


def content_hash(side: Side, name: str = "item") -> str:
    """sha256 of what the side shows and says (media by their bytes); MediaError if a file is unreadable."""
    media: list[Any] = []
    for i, image in enumerate(side.images):
        media.append(hashlib.sha256(image).hexdigest() if isinstance(image, bytes)
                     else _file_digest(image, f"{name} image {i}"))
    video = page = None
    if side.video is not None:
        video = [_file_digest(side.video.path, f"{name} video"), side.video.start, side.video.end]
    if side.page is not None:
        path = side.page.path
        page = [hashlib.sha256(path).hexdigest() if isinstance(path, bytes) else _file_digest(path, f"{name} page"),
                side.page.page]
    canon = {"instruction": side.instruction, "text": side.text, "images": media, "video": video, "page": page}
    return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of an ECR (or errors) file; a torn or unparsable line is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # the line a killed run was writing
            if isinstance(record, dict) and "key" in record:
                out.append(record)
    return out


def done_keys(path: str | Path) -> set[str]:
    return {r["key"] for r in read_records(path)}


class EcrWriter:
    """Appends records to ``ecr.jsonl``, one flushed write per batch."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / ECR_FILE
        self._repair()

    def _repair(self) -> None:
        # A killed run may leave a torn last line; end it so the next record starts on a line of its own.
        if self.path.exists() and self.path.stat().st_size:
            with self.path.open("rb") as fh:
                fh.seek(-1, os.SEEK_END)
                last = fh.read(1)
            if last != b"\n":
                with self.path.open("ab") as fh:
                    fh.write(b"\n")

    def append(self, records: Iterable[dict[str, Any]]) -> int:
        lines = [json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records]
        if lines:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write("".join(lines))
                fh.flush()
                os.fsync(fh.fileno())
        return len(lines)


def write_errors(folder: str | Path, errors: list[dict[str, Any]]) -> Path:
    """This run's errors (replacing the last run's): one {name, stage, reason} object per line."""
    path = Path(folder) / ERRORS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(e, ensure_ascii=False, sort_keys=True) + "\n" for e in errors),
                    encoding="utf-8")
    return path


class EcrLookup:
    """ECR texts by (content hash, template name), read from ECR files (for embedders: ``model.reasoning_from``).

    The template name is the one the job chose for the item's task, so the same content under two
    tasks keeps two texts. When one (content, template) has records of several reasoners or template
    wordings, ``reasoner`` / ``template`` (an id) must say which to use; truncated records are used
    unless ``allow_truncated`` is false.
    """

    def __init__(self, paths: Iterable[str | Path], reasoner: str | None = None, template: str | None = None,
                 allow_truncated: bool = True):
        self.texts: dict[tuple[str, str], str] = {}
        seen: dict[tuple[str, str], tuple[str, str]] = {}
        for path in paths:
            path = Path(path)
            for record in read_records(path / ECR_FILE if path.is_dir() else path):
                if (reasoner and record["reasoner"] != reasoner) or (template and record["template"] != template):
                    continue
                if record.get("truncated") and not allow_truncated:
                    continue
                key = (record["content_hash"], record["template"].split("@")[0])
                origin = (record["template"], record["reasoner"])
                if key in seen and seen[key] != origin:
                    raise ValueError(f"content {key[0][:12]} has {key[1]} ECR from {seen[key]} and {origin}; set "
                                     "model.reasoning_reasoner / model.reasoning_template to choose")
                seen[key] = origin
                self.texts[key] = record["text"]

    def __len__(self) -> int:
        return len(self.texts)

    def get(self, side: Side, template: str, name: str = "item") -> str | None:
        """The ECR of ``side`` written with reasoner template ``template`` (a name, e.g. ``qa``)."""
        try:
            return self.texts.get((content_hash(side, name), template))
        except MediaError:
            return None  # unreadable media fail later, where the item is encoded

"""Find the files to ingest: folders, single files, globs, ``@list.txt`` files and storage URIs.

Local paths become absolute paths; anything with a scheme (``s3://``, ``gs://``, ``hdfs://``, or
any fsspec protocol) is listed through a pyarrow filesystem. Each source also yields a
:class:`Scope`, the part of the namespace it covers, so that ``--prune`` removes rows of vanished
files inside the sources and never touches rows that came from elsewhere.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

GLOB_CHARS = "*?["


@dataclass(frozen=True)
class SourceFile:
    uri: str
    size: int


@dataclass(frozen=True)
class Scope:
    """What a source covers: files under ``prefix`` (a folder), matching ``pattern`` (a glob), or
    exactly ``prefix`` (a single file)."""

    prefix: str
    pattern: re.Pattern[str] | None = None
    exact: bool = False

    def covers(self, uri: str) -> bool:
        if self.exact:
            return uri == self.prefix
        if not uri.startswith(self.prefix):
            return False
        return self.pattern is None or self.pattern.match(uri) is not None


@dataclass
class Discovery:
    files: list[SourceFile] = field(default_factory=list)
    scopes: list[Scope] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)


@dataclass(frozen=True)
class Location:
    """A filesystem, a path in it, and the ``root`` that turns its paths back into URIs."""

    fs: pafs.FileSystem
    path: str
    root: str = ""  # "" for local paths; e.g. "s3://" or "hdfs://host:8020"

    def uri(self, path: str) -> str:
        return self.root + path


def locate(uri: str) -> Location:
    """The filesystem holding ``uri`` (a local path or a URI), and the path inside it."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return Location(pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri)))
    if scheme == "file":
        return Location(pafs.LocalFileSystem(), os.path.abspath(rest))
    uri = uri.rstrip("/") if rest.strip("/") else uri
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # Protocols pyarrow has no native filesystem for (memory, http, ...) go through fsspec.
        import fsspec

        spec_fs, path = fsspec.core.url_to_fs(uri)
        fs = pafs.PyFileSystem(pafs.FSSpecHandler(spec_fs))
    # The URI minus the path is its scheme and authority ("s3://", "hdfs://host:8020").
    root = uri[: len(uri) - len(path)] if path and uri.endswith(path) else f"{scheme}://"
    return Location(fs, path, root)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Regex of a glob over whole paths: ``*``/``?``/``[...]`` stay within one folder, ``**`` spans any."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) != -1:
            inner = pattern[i + 1 : end]
            inner = "^" + inner[1:] if inner.startswith("!") else inner
            out.append("[" + inner.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def split_glob(path: str) -> tuple[str, str | None]:
    """(folder before the first wildcard, the rest) of a path; (path, None) without wildcards."""
    parts = path.split("/")
    for index, part in enumerate(parts):
        if any(c in part for c in GLOB_CHARS):
            return "/".join(parts[:index]) or "/", "/".join(parts[index:])
    return path, None


def read_list(path: str) -> list[str]:
    """Sources named in a list file, one per line; blank lines and ``#`` comments are ignored.
    Relative paths are relative to the list file's folder."""
    base = Path(path).expanduser().resolve().parent
    sources = []
    for line in Path(path).expanduser().read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        sources.append(line if "://" in line or os.path.isabs(line) else str(base / line))
    return sources


def discover(sources: Sequence[str], *, include_hidden: bool = False) -> Discovery:
    """List every file the sources name, sorted and without repeats; unusable sources are reported."""
    found = Discovery()
    seen: dict[str, SourceFile] = {}
    for source in _expand_lists(sources, found):
        try:
            files, scope = _list(source, include_hidden)
        except (OSError, pa.ArrowException, ValueError, ImportError) as exc:
            found.errors.append((source, f"cannot list: {exc}"))
            continue
        if scope is not None:
            found.scopes.append(scope)
        if not files:
            found.errors.append((source, "no files match" if scope is not None else "not found"))
        for f in files:
            seen.setdefault(f.uri, f)
    found.files = sorted(seen.values(), key=lambda f: f.uri)
    return found


def _expand_lists(sources: Sequence[str], found: Discovery) -> Iterable[str]:
    for source in sources:
        if source.startswith("@"):
            try:
                yield from read_list(source[1:])
            except OSError as exc:
                found.errors.append((source, f"cannot read the list file: {exc.strerror or exc}"))
        else:
            yield source


def _list(source: str, include_hidden: bool) -> tuple[list[SourceFile], Scope | None]:
    loc = locate(source)
    base, wildcard = split_glob(loc.path)
    info = loc.fs.get_file_info(loc.path)
    if wildcard is not None and info.type == pafs.FileType.NotFound:  # "[2020] photos" may be a real name
        regex = glob_regex(loc.path)
        recursive = "/" in wildcard or "**" in wildcard
        folder = pafs.FileSelector(base, recursive=recursive, allow_not_found=True)
        prefix = base.rstrip("/") + "/"
        files = [
            SourceFile(loc.uri(entry.path), entry.size)
            for entry in loc.fs.get_file_info(folder)
            if entry.type == pafs.FileType.File and regex.match(entry.path)
            and (include_hidden or not _hidden(entry.path[len(prefix):]))
        ]
        return files, Scope(loc.uri(prefix), glob_regex(loc.uri(loc.path)))
    if info.type == pafs.FileType.File:
        return [SourceFile(loc.uri(loc.path), info.size)], Scope(loc.uri(loc.path), exact=True)
    if info.type == pafs.FileType.Directory:
        prefix = loc.path.rstrip("/") + "/"
        files = [
            SourceFile(loc.uri(i.path), i.size)
            for i in loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=True))
            if i.type == pafs.FileType.File and (include_hidden or not _hidden(i.path[len(prefix):]))
        ]
        return files, Scope(loc.uri(prefix))
    return [], None


def _hidden(relative: str) -> bool:
    """Dot-files and anything inside dot-folders (.git, .DS_Store, editor swap files, ...)."""
    return any(part.startswith(".") for part in relative.split("/"))

"""Make a source file readable by the decoders (a local path), hashing its bytes on the way.

Local files are hashed in place; remote files are streamed into a temporary file (decord and
MuPDF want paths) and hashed while they are copied, so every file is read once for both.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import PurePosixPath

from omniret.errors import MediaError
from omniret.ingest.discover import locate
from omniret.media.sniff import HEAD_BYTES, MediaKind, detect_kind

CHUNK = 1 << 20


@dataclass(frozen=True)
class LocalFile:
    """A readable copy of ``uri`` at ``path`` with the sha256 and size of its bytes."""

    uri: str
    path: str
    sha256: str
    size: int
    head: bytes
    _stamp: tuple[int, int] | None = None  # (size, mtime_ns) of a local original when hashed

    @property
    def kind(self) -> MediaKind | None:
        """image / video / pdf from the leading bytes (never from the name), or None."""
        return detect_kind(self.head)

    def changed(self) -> bool:
        """Whether a local original changed since it was hashed (its rows would get a wrong id)."""
        if self._stamp is None:
            return False
        try:
            return _stamp(self.path) != self._stamp
        except OSError:
            return True  # removed or unreadable now


@contextmanager
def local_file(uri: str, *, max_bytes: int) -> Iterator[LocalFile]:
    """Yield a :class:`LocalFile` for ``uri``; :class:`MediaError` if it is empty, too large or unreadable."""
    loc = locate(uri)
    if not loc.root:
        yield _hash_local(uri, loc.path, max_bytes)
        return
    suffix = PurePosixPath(loc.path).suffix[:16]
    with tempfile.TemporaryDirectory(prefix="omniret-fetch-") as tmp:
        target = os.path.join(tmp, "source" + suffix)
        digest, size, head = hashlib.sha256(), 0, b""
        try:
            with loc.fs.open_input_stream(loc.path) as src, open(target, "wb") as dst:
                while chunk := src.read(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise MediaError(uri, f"file is too large: over {max_bytes} bytes")
                    head = head or chunk[:HEAD_BYTES]
                    digest.update(chunk)
                    dst.write(chunk)
        except OSError as exc:
            raise MediaError(uri, f"cannot read file: {exc}") from None
        if size == 0:
            raise MediaError(uri, "empty file (0 bytes)")
        yield LocalFile(uri, target, digest.hexdigest(), size, head)


def _hash_local(uri: str, path: str, max_bytes: int) -> LocalFile:
    try:
        stamp = _stamp(path)
        if stamp[0] == 0:
            raise MediaError(uri, "empty file (0 bytes)")
        if stamp[0] > max_bytes:
            raise MediaError(uri, f"file is too large: {stamp[0]} bytes, limit {max_bytes}")
        digest = hashlib.sha256()
        with open(path, "rb") as fp:
            head = fp.read(HEAD_BYTES)
            digest.update(head)
            while chunk := fp.read(CHUNK):
                digest.update(chunk)
    except FileNotFoundError:
        raise MediaError(uri, "file not found (removed after it was listed)") from None
    except IsADirectoryError:
        raise MediaError(uri, "is a directory, not a file") from None
    except OSError as exc:
        raise MediaError(uri, f"cannot read file: {exc.strerror or exc}") from None
    return LocalFile(uri, path, digest.hexdigest(), stamp[0], head, stamp)


def _stamp(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns

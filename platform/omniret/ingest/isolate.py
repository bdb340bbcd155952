"""Decode files in a child Ray task, so that a native crash fails only the files it was decoding.

Python errors in decoders already stay with their item (:func:`omniret.ingest.expand.expand_file`
catches them). A native crash cannot be caught: a segfault in a decoding library, or the OOM killer,
ends the whole process, and Ray Data retries a task whose process died without limit, so a file
that always crashes its decoder would stall the run. So the Ray Data task hands its files to a child task (a separate worker
process) and streams the work rows back. When the child dies, the files it had not finished are
decoded again, one file per child: a file whose own child dies too is reported as failed at the
``decode`` stage, and every other file is still expanded. Rows that already arrived before the
crash are not sent twice.

The child reserves no CPU or memory of its own: the Ray Data task that waits on it holds them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from omniret.ingest import rows

log = logging.getLogger(__name__)

_child: Any = None


def _expand(uris: list[str], media: dict[str, Any], index: dict[str, Any], thumbnail_px: int
            ) -> Iterator[pa.Table]:
    from omniret.ingest.expand import expand_uris

    yield from expand_uris(uris, media=media, index=index, thumbnail_px=thumbnail_px)


def _child_task() -> Any:
    global _child
    if _child is None:
        import ray

        # No retries: a file that crashes its decoder would crash every retry of the whole batch;
        # the one-file-per-child fallback below is the retry.
        _child = ray.remote(num_cpus=0, max_retries=0)(_expand)
    return _child


def crash_errors() -> tuple[type[BaseException], ...]:
    """Ray's errors for a task whose process died (signal, OOM kill) rather than raised."""
    from ray.exceptions import OutOfMemoryError, WorkerCrashedError

    return WorkerCrashedError, OutOfMemoryError


def crash_reason(exc: BaseException) -> str:
    return (f"the decoding process died ({type(exc).__name__}): the file crashes its decoder (a native "
            "fault) or needs more memory than the worker has")


def expand_in_child(uris: list[str], *, media: dict[str, Any], index: dict[str, Any], thumbnail_px: int
                    ) -> Iterator[pa.Table]:
    """Work rows of ``uris`` as :func:`~omniret.ingest.expand.expand_uris` yields them, decoded in a
    child process; files whose decoding process dies get a ``decode`` failure row instead."""
    yield from _guarded(uris, (media, index, thumbnail_px), set())


def _guarded(uris: list[str], args: tuple[Any, ...], seen: set[tuple[Any, ...]]) -> Iterator[pa.Table]:
    import ray

    started: list[str] = []  # files with rows received, in order
    try:
        for ref in _child_task().remote(uris, *args):
            table = ray.get(ref)
            fresh = [row for row in table.to_pylist() if _key(row) not in seen]
            for row in fresh:
                seen.add(_key(row))
                if row["source_uri"] not in started:
                    started.append(row["source_uri"])
            if fresh:
                yield rows.table(fresh, rows.WORK_SCHEMA)
        return
    except crash_errors() as exc:
        if len(uris) == 1:
            log.warning("decoding %s crashed its process: %s", uris[0], type(exc).__name__)
            yield rows.table([rows.failure(uris[0], "decode", crash_reason(exc))], rows.WORK_SCHEMA)
            return
        # Rows come file by file, so only the file the child was on (the last one started) and the
        # files not started yet are unfinished.
        again = [u for u in uris if u not in started or (started and u == started[-1])]
        log.warning("a decoding process died (%s) with %d of %d files unfinished; decoding them one per "
                    "process", type(exc).__name__, len(again), len(uris))
    for uri in again:
        yield from _guarded([uri], args, seen)


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    """Identity of a work row: one plan / skip row per file, one row per item (by id)."""
    return row["status"], row["stage"], row["source_uri"], row["id"]

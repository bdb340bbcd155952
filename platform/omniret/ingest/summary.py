"""Count the pipeline's result rows into a run summary, decide the exit code, print a report."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from omniret.ingest import rows

#: Exit codes of ``omniret ingest``.
OK, NOTHING_INGESTED, LIMIT_HIT = 0, 1, 3


@dataclass
class IngestSummary:
    files_seen: int = 0
    items_planned: int = 0
    items_written: int = 0
    items_skipped: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)  # uri, unit, stage, reason
    stale_removed: int = 0  # rows of replaced content or vanished files
    repointed: int = 0  # contents whose rows moved to another path holding the same bytes
    pruned: int = 0  # files gone from the sources whose rows were removed
    duplicates_removed: int = 0
    index_actions: list[str] = field(default_factory=list)
    table_rows: int = 0
    seconds: float = 0.0
    stopped: str | None = None  # why the run stopped early (a limit), if it did
    # Per file: sha256 (None if unreadable), items planned, items stored (written or present).
    file_sha: dict[str, str | None] = field(default_factory=dict, repr=False)
    file_planned: Counter = field(default_factory=Counter, repr=False)
    file_stored: Counter = field(default_factory=Counter, repr=False)

    def add(self, batch: pa.Table) -> None:
        """Count one batch of result rows."""
        for row in batch.select(rows.RESULT_SCHEMA.names).to_pylist():
            uri, status, n = row["source_uri"], row["status"], row["n"] or 0
            if row["sha256"] or uri not in self.file_sha:
                self.file_sha[uri] = row["sha256"] or self.file_sha.get(uri)
            if status == rows.PLANNED:
                self.items_planned += n
                self.file_planned[uri] += n
            elif status == rows.SKIPPED:
                self.items_skipped += n
                self.file_stored[uri] += n
            elif status == rows.WRITTEN:
                self.items_written += 1
                self.file_stored[uri] += 1
            elif status == rows.FAILED:
                self.add_error(uri, row["stage"], row["reason"], row["unit"])

    def add_error(self, uri: str, stage: str, reason: str, unit: str | None = None) -> None:
        self.errors.append({"uri": uri, "unit": unit or "", "stage": stage, "reason": reason})

    @property
    def failed_files(self) -> set[str]:
        return {e["uri"] for e in self.errors}

    @property
    def complete_files(self) -> set[str]:
        """Files whose every item is stored now (written in this run or already present)."""
        failed = self.failed_files
        return {uri for uri, n in self.file_planned.items()
                if uri not in failed and self.file_stored[uri] == n}

    @property
    def items_failed(self) -> int:
        return len(self.errors)

    @property
    def items_per_second(self) -> float:
        return self.items_written / self.seconds if self.seconds > 0 else 0.0

    def exit_code(self) -> int:
        """0 when the sources' good items are all stored; 1 when nothing could be; 3 on a limit."""
        if self.stopped:
            return LIMIT_HIT
        if self.items_written + self.items_skipped == 0:
            return NOTHING_INGESTED
        return OK

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if not k.startswith("file_")}
        data.update(items_failed=self.items_failed, files_failed=len(self.failed_files),
                    items_per_second=round(self.items_per_second, 2), exit_code=self.exit_code())
        return data

    def format(self) -> str:
        lines = [
            f"files seen: {self.files_seen} ({len(self.failed_files)} with errors)",
            f"items: {self.items_written} written, {self.items_skipped} already present (skipped), "
            f"{self.items_failed} failed",
            f"table: {self.table_rows} rows; removed {self.stale_removed} stale rows ({self.pruned} files "
            f"gone), re-pointed {self.repointed} contents, removed {self.duplicates_removed} duplicates",
            f"time: {self.seconds:.1f} s ({self.items_per_second:.1f} items/s written)",
        ]
        lines += [f"index: {action}" for action in self.index_actions]
        if self.errors:
            lines.append("errors:")
            for e in sorted(self.errors, key=lambda e: (e["uri"], e["unit"])):
                unit = f" [{e['unit']}]" if e["unit"] else ""
                lines.append(f"  {e['uri']}{unit} ({e['stage']}): {e['reason']}")
        if self.stopped:
            lines.append(f"stopped early: {self.stopped}")
        elif self.exit_code() == NOTHING_INGESTED:
            lines.append("nothing could be ingested")
        return "\n".join(lines)

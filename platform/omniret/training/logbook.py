"""The run's written record: per-step metrics (CSV), evaluation scores (CSV), start/resume events.

Rank 0 writes; a resumed attempt appends, so steps between the last checkpoint and a failure appear
twice (the plot and readers keep the last row of a step). Columns are fixed by the first row written
(or by the existing file's header); later keys that were not there are dropped, missing ones left empty.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

from omniret.progress import Pace, duration

log = logging.getLogger(__name__)

METRICS_CSV = "metrics.csv"
EVAL_CSV = "eval.csv"
EVENTS = "events.jsonl"


class CsvLog:
    """Append rows of a dict to a CSV file whose header is fixed at the first write."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.fields: list[str] | None = None
        if self.path.is_file() and self.path.stat().st_size:
            with self.path.open(newline="") as f:
                self.fields = next(csv.reader(f), None)

    def write(self, row: dict[str, Any]) -> None:
        new = self.fields is None
        if new:
            self.fields = list(row)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: _cell(v) for k, v in row.items()})


def _cell(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def read_rows(path: str | Path, key: str = "step") -> list[dict[str, str]]:
    """Rows of a log CSV, keeping the last row written for each ``key`` value, in ``key`` order."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    last = {row[key]: row for row in rows if row.get(key) not in (None, "")}
    return sorted(last.values(), key=lambda r: float(r[key]))


def record_event(run_dir: str | Path, event: str, **fields: Any) -> None:
    path = Path(run_dir) / EVENTS
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps({"event": event, "time": time.time(), **fields}) + "\n")


def read_events(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / EVENTS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def console_line(row: dict[str, Any], total: int, pace: Pace | None = None) -> str:
    """One progress line: a text progress bar, step, epoch, group, loss, temperature, negatives, throughput,
    memory and, with the run's ``pace``, the time left (worker logs reach the driver line by line, so the
    bar is redrawn as text, not in place)."""
    left = pace.update(row["step"], row.get("step_s")) if pace is not None else None
    done = int(20 * row["step"] / max(total, 1))
    # a reranker step reports yes-probabilities, a reasoner SFT step its ECR tokens, instead of a temperature
    # and negatives
    middle = (f"p_yes pos {row['p_yes_pos']:.3f} neg {row.get('p_yes_neg', float('nan')):.3f} " if "p_yes_pos" in row
              else f"ecr tokens {row['ecr_tokens']:.0f} " if "ecr_tokens" in row
              else f"tau {row.get('temperature', float('nan')):.4f} negatives {row.get('num_negatives', 0):.1f} ")
    return (f"[{'#' * done}{'.' * (20 - done)}] step {row['step']}/{total} epoch {row['epoch']} [{row['group']}] loss {row['loss']:.4f} "
            f"{middle}{row['pairs_per_s']:.1f} pairs/s lr {row['lr']:.2e} peak {row['peak_mem_mb']:.0f} MB"
            + (f" ETA {duration(left)}" if left is not None and row["step"] < total else ""))

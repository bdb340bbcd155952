"""Progress lines for long loops (evaluation sets, mining, training steps): done/total, elapsed, ETA.

Plain log lines rather than redrawn bars: Ray forwards worker output to the driver (and to
``ray job logs``) line by line, where a bar drawn in place would be lost or garbled.
"""

from __future__ import annotations

import logging
import time


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


class Pace:
    """Time per unit of work since the first observation; the ETA of the rest.

    The first observation (``done`` units finished after ``first_s`` seconds of their own) gives the
    first estimate; later ones average over the wall time since it, so slow warm-up steps weigh less.
    """

    def __init__(self, total: int):
        self.total = total
        self.start = time.monotonic()
        self.done0: int | None = None
        self.last = -1
        self.per_unit: float | None = None

    def update(self, done: int, first_s: float | None = None) -> float | None:
        """Record ``done`` units finished; returns the estimated seconds left (None before any estimate)."""
        now = time.monotonic()
        if self.done0 is None or done <= self.last:  # first call, or a new run / restart from an earlier point
            self.start, self.done0 = now, done
            self.per_unit = first_s
        elif done > self.done0:
            self.per_unit = (now - self.start) / (done - self.done0)
        self.last = done
        return None if self.per_unit is None else self.per_unit * max(0, self.total - done)


class Progress:
    """``what i/n: label (elapsed, ETA)`` log lines, one per finished part."""

    def __init__(self, what: str, total: int, logger: logging.Logger):
        self.what, self.total, self.log = what, total, logger
        self.started = time.monotonic()
        self.pace = Pace(total)
        self.pace.update(0)
        self.done = 0

    def step(self, label: str = "") -> None:
        self.done += 1
        left = self.pace.update(self.done)
        eta = "" if left is None or self.done >= self.total else f", ETA {duration(left)}"
        self.log.info("%s %d/%d%s (%s elapsed%s)", self.what, self.done, self.total, f": {label}" if label else "",
                      duration(time.monotonic() - self.started), eta)

"""Progress lines: durations, the ETA from the pace so far (on a controlled clock), the training line."""

from __future__ import annotations

import logging

import pytest

from omniret import progress
from omniret.progress import Pace, Progress, duration
from omniret.training.logbook import console_line


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(progress.time, "monotonic", c)
    return c


def test_duration():
    assert [duration(s) for s in (0.4, 42, 185, 3725)] == ["0 s", "42 s", "3 min 05 s", "1 h 02 min"]


def test_pace_uses_the_first_step_then_the_average_since(clock):
    pace = Pace(100)
    assert pace.update(10, first_s=2.0) == pytest.approx(180.0)  # 90 steps left at 2 s
    clock.now += 30.0
    assert pace.update(20) == pytest.approx(80 * 3.0)  # 10 steps in 30 s
    clock.now += 10.0
    assert pace.update(30) == pytest.approx(70 * 2.0)  # 20 steps in 40 s
    assert pace.update(5, first_s=1.0) == pytest.approx(95.0)  # a lower step: a new run, a new estimate


def test_progress_lines(clock, caplog):
    caplog.set_level(logging.INFO)
    p = Progress("mined dataset", 3, logging.getLogger("t"))
    clock.now += 60.0
    p.step("a")
    clock.now += 60.0
    p.step("b")
    p.step("c")
    assert caplog.messages == ["mined dataset 1/3: a (1 min 00 s elapsed, ETA 2 min 00 s)",
                               "mined dataset 2/3: b (2 min 00 s elapsed, ETA 1 min 00 s)",
                               "mined dataset 3/3: c (2 min 00 s elapsed)"]


def test_training_line_has_the_eta(clock):
    row = {"step": 50, "epoch": 0, "group": "syn_t2i", "loss": 1.5, "temperature": 0.05, "num_negatives": 31.0,
           "pairs_per_s": 64.0, "lr": 1e-4, "peak_mem_mb": 900.0, "step_s": 0.5}
    pace = Pace(200)  # each run has its own: the ETA never mixes runs of one process
    line = console_line(row, 200, pace)
    assert line.startswith("[#####...............] step 50/200") and line.endswith("ETA 1 min 15 s")
    clock.now += 50.0
    assert console_line({**row, "step": 100}, 200, pace).endswith("ETA 1 min 40 s")  # 50 steps in 50 s, 100 left
    assert "ETA" not in console_line({**row, "step": 200}, 200, pace)
    assert "ETA" not in console_line(row, 200)  # no pace, no estimate


def test_a_reasoner_sft_line_shows_its_ecr_tokens_not_a_temperature():
    row = {"step": 5, "epoch": 0, "group": "syn_t2i", "loss": 0.31, "ecr_tokens": 950.0, "pairs_per_s": 30.0,
           "lr": 1e-4, "peak_mem_mb": 900.0}
    line = console_line(row, 10)
    assert "loss 0.3100 ecr tokens 950 30.0 pairs/s" in line and "tau" not in line

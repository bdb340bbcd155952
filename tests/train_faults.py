"""Kill a Ray Train worker mid-run: start ``fit`` in a thread, wait until Ray Train has registered a checkpoint
well before the end, then SIGKILL rank 1 (shared by the training fault tests)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

from omniret.training.logbook import read_events
from omniret.training.trainer import fit


def fit_killing_rank1(cfg, run_dir, before_step: int, timeout: float = 240) -> tuple[dict, int]:
    """Run ``fit(cfg)`` and kill rank 1 once a checkpoint of a step below ``before_step`` is registered.

    Returns (``{"result": TrainResult}`` once the run ended, the registered step at the kill)."""
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(result=fit(cfg)), daemon=True)
    thread.start()
    killed = registered = None
    deadline = time.monotonic() + timeout
    while killed is None and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.1)
        # Ray Train registers a reported checkpoint when its controller next polls the workers (every 2 s);
        # kill only once one is registered, as a real failure long after the last report would find it.
        snapshot = run_dir / "checkpoint_manager_snapshot.json"
        latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result") if snapshot.is_file() else None
        starts = [e for e in read_events(run_dir) if e["event"] == "start"]
        if latest and starts and latest["metrics"]["step"] < before_step:
            registered = latest["metrics"]["step"]
            killed = starts[0]["pids"][1]
            os.kill(killed, signal.SIGKILL)  # rank 1 dies mid-run
    assert killed is not None, "the run ended before a worker could be killed"
    thread.join(timeout=timeout + 60)
    return outcome, registered


def assert_uninterrupted_batches(cfg, run_dir, total: int) -> list[dict]:
    """Every step 1..total is in metrics.csv, each (including those redone after a failure) with the batch an
    uninterrupted run draws; returns the rows."""
    import csv

    from omniret.data.mixing import load_mixture
    from omniret.training.sampling import BatchSampler

    sampler = BatchSampler(load_mixture(cfg.data)[0], cfg.train.batch_size, seed=cfg.train.seed)
    expected = [sampler.next().fingerprint() for _ in range(total)]
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted({int(r["step"]) for r in rows}) == list(range(1, total + 1))
    for row in rows:
        assert int(row["batch"]) == expected[int(row["step"]) - 1]
    return rows

"""Join or start Ray for the library's own jobs (ingest, evaluation, mining, training)."""

from __future__ import annotations

import os


def ensure_ray(num_cpus: int | None = None) -> None:
    """Reuse a running Ray session; join the cluster in RAY_ADDRESS (``ray job submit`` sets it);
    otherwise start a local instance with ``num_cpus`` (default: the CPUs this process may use)."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ray.init(address="local", num_cpus=num_cpus or usable, include_dashboard=False)

"""Join or start Ray for the library's own jobs (ingest, evaluation, mining, training)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path


def ensure_ray(num_cpus: int | None = None) -> None:
    """Reuse a running Ray session; join the cluster in RAY_ADDRESS (``ray job submit`` sets it);
    otherwise start a local instance with ``num_cpus`` (default: the CPUs this process may use)."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env=code_runtime_env())
        return
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ray.init(address="local", num_cpus=num_cpus or usable, include_dashboard=False,
             runtime_env={"worker_process_setup_hook": SETUP_HOOK})


# Ray Train's placement-group cleaner (a detached actor) checks whether the training controller is
# alive through the State API, which the dashboard serves. A local instance starts without a dashboard
# (a process and a port it does not need), so each check fails and logs a warning, hundreds per run,
# burying the training's progress lines. The cleaner only matters when a driver dies and leaves its
# placement group behind on a long-lived cluster; a local instance ends with its driver.
CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def quiet_placement_group_cleaner() -> None:
    """Worker setup hook of a local Ray instance: the cleaner's State-API warnings are not shown."""
    logging.getLogger(CLEANER_LOGGER).setLevel(logging.ERROR)


SETUP_HOOK = f"{__name__}.{quiet_placement_group_cleaner.__name__}"


def code_runtime_env() -> dict | None:
    """A runtime env that ships the omniret package this driver imported to every worker of the job.

    A submitted job's driver imports the sources it was submitted with (ray_jobs/*.py put the
    working_dir's platform/ first on sys.path); its workers (Ray Train, Ray Data actors) get the same
    package as ``py_modules``, so a cluster that has only the dependencies installed, or an older
    omniret, runs exactly the submitted code. Left out when the job already sets ``py_modules``
    (Ray refuses to merge the same field) or when OMNIRET_SHIP_CODE=0 (an image whose omniret is
    meant to be used).
    """
    import omniret

    if os.environ.get("OMNIRET_SHIP_CODE", "1") == "0":
        return None
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}").get("runtime_env") or {}
    if "py_modules" in job:
        return None
    return {"py_modules": [str(Path(omniret.__file__).resolve().parent)]}

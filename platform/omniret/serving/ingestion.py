"""Ingest files sent to the API: keep them under ``serve.upload_dir`` and run the ingest pipeline on them.

The pipeline runs as a Ray task beside the service (the HTTP front never writes to the table
itself). Jobs are kept by one named, detached actor (:class:`IngestJobs`) that every ingress replica
finds by name: it starts each run and keeps its state and summary, so a job id accepted by one replica
is answered by any other, and a run goes on when the replica that accepted it is gone.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

from omniret.config import OmniretConfig
from omniret.serving.api import IngestFile, InputError, InputParser

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def save_uploads(files: list[IngestFile], parser: InputParser, folder: str | Path) -> list[Path]:
    """Decode, type-check and store each file as ``<sha256 prefix>-<sanitised name>``."""
    from omniret.media.sniff import detect_kind

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    saved = []
    for i, upload in enumerate(files):
        param = f"files[{i}].data"
        if not upload.data.startswith("data:"):
            raise InputError(param, "uploads must be data: URIs")
        data = parser.data(upload.data, param)
        assert isinstance(data, bytes)
        kind = detect_kind(data[:64])
        if kind not in parser.cfg.allowed_types:
            raise InputError(param, f"{Path(upload.name).name!r} is {kind or 'of an unknown type'}; accepted: "
                                    f"{', '.join(parser.cfg.allowed_types)}", 415)
        name = _UNSAFE.sub("_", Path(upload.name).name).strip("._") or "upload"
        path = folder / f"{hashlib.sha256(data).hexdigest()[:12]}-{name}"
        if not path.exists():
            tmp = path.with_suffix(path.suffix + ".part")
            tmp.write_bytes(data)
            tmp.replace(path)  # readers never see a half-written file
        saved.append(path)
    return saved


def _run(cfg: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    from omniret.ingest.pipeline import run_ingest

    return run_ingest(OmniretConfig.model_validate(cfg), paths).to_dict()


#: Where every replica finds the jobs actor: a fixed namespace, as Serve replicas run in their own.
JOBS_ACTOR = "omniret-ingest-jobs"
JOBS_NAMESPACE = "omniret"
#: Finished jobs remembered (the oldest are forgotten first); running jobs are always kept.
MAX_FINISHED_JOBS = 1000


class IngestJobs:
    """Actor body: starts ingest runs and answers for them, whichever replica asks.

    The actor owns the runs' Ray tasks, so their results outlive the replica that submitted them.
    """

    def __init__(self, max_finished: int = MAX_FINISHED_JOBS):
        import ray

        self._task = ray.remote(num_cpus=0)(_run)  # it only drives the pipeline; its actors hold CPUs
        self.max_finished = max_finished
        self.jobs: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def submit(self, job_id: str, cfg: dict[str, Any], files: list[str]) -> str:
        self.jobs[job_id] = {"files": files, "ref": self._task.remote(cfg, files), "submitted": time.time()}
        return job_id

    def status(self, job_id: str) -> dict[str, Any] | None:
        import ray

        job = self.jobs.get(job_id)
        if job is None:
            return None
        out = {"job_id": job_id, "files": job["files"]}
        ref = job.get("ref")
        if ref is not None:
            ready, _ = ray.wait([ref], timeout=0)
            if not ready:
                return {**out, "status": "running"}
            try:
                job.update(status="done", summary=ray.get(ref))
            except Exception as exc:  # the task's error, reported to the caller instead of a 500
                job.update(status="failed", error=str(exc).splitlines()[-1])
            del job["ref"]
            self._forget_old()
        keys = ("status", "summary") if job["status"] == "done" else ("status", "error")
        return {**out, **{k: job[k] for k in keys}}

    def _forget_old(self) -> None:
        finished = [k for k, job in self.jobs.items() if "ref" not in job]
        for key in finished[: max(0, len(finished) - self.max_finished)]:
            del self.jobs[key]


def jobs_actor() -> Any:
    """The jobs actor of this Ray cluster, created by the first replica that needs it."""
    import ray

    return ray.remote(IngestJobs).options(
        name=JOBS_ACTOR, namespace=JOBS_NAMESPACE, get_if_exists=True, lifetime="detached", num_cpus=0,
    ).remote()


class RayIngestor:
    """Submits ingest runs to the shared jobs actor and reports their state."""

    def __init__(self, cfg: OmniretConfig, timeout_s: float = 30.0):
        self.cfg = cfg
        self.timeout_s = timeout_s
        self.actor = jobs_actor()

    def submit(self, paths: list[Path]) -> str:
        import ray

        job_id = uuid.uuid4().hex[:12]
        # Waiting for the actor to record the job means any replica can answer for it right after.
        return ray.get(self.actor.submit.remote(job_id, self.cfg.model_dump(), [str(p) for p in paths]),
                       timeout=self.timeout_s)

    def status(self, job_id: str) -> dict[str, Any]:
        import ray

        state = ray.get(self.actor.status.remote(job_id), timeout=self.timeout_s)
        if state is None:
            raise InputError("job_id", f"no ingest job {job_id!r}", 404)
        return state

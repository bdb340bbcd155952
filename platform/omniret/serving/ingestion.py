"""Ingest files sent to the API: keep them under ``serve.upload_dir`` and run the ingest pipeline on them.

The pipeline runs as a Ray task beside the service (the HTTP front never writes to the table
itself); its summary is kept per job id for ``GET /v1/ingest/{job_id}``. Job ids live in the ingress
replica that accepted the upload.
"""

from __future__ import annotations

import hashlib
import re
import uuid
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


class RayIngestor:
    """Submits ingest runs as Ray tasks and reports their state."""

    def __init__(self, cfg: OmniretConfig):
        import ray

        self.cfg = cfg
        # The task only drives the pipeline; its own decoding/embedding actors reserve the CPUs.
        self._task = ray.remote(num_cpus=0)(_run)
        self.jobs: dict[str, tuple[Any, list[str]]] = {}

    def submit(self, paths: list[Path]) -> str:
        job_id = uuid.uuid4().hex[:12]
        files = [str(p) for p in paths]
        self.jobs[job_id] = (self._task.remote(self.cfg.model_dump(), files), files)
        return job_id

    def status(self, job_id: str) -> dict[str, Any]:
        import ray

        if job_id not in self.jobs:
            raise InputError("job_id", f"no ingest job {job_id!r} in this replica", 404)
        ref, files = self.jobs[job_id]
        ready, _ = ray.wait([ref], timeout=0)
        if not ready:
            return {"job_id": job_id, "status": "running", "files": files}
        try:
            return {"job_id": job_id, "status": "done", "files": files, "summary": ray.get(ref)}
        except Exception as exc:  # the task's error, reported to the caller instead of a 500
            return {"job_id": job_id, "status": "failed", "files": files, "error": str(exc).splitlines()[-1]}

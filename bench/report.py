"""Write a benchmark's figures into docs/BENCHMARKS.md, with the conditions they were measured under.

Each benchmark owns a ``## title`` section. What a script generates sits between its markers
``<!-- bench:SLUG begin -->`` and ``<!-- bench:SLUG end -->`` (SLUG from the title); a rerun replaces
only that block, so hand-written text outside the markers (readings, notes) survives regeneration.
A section without markers (written before markers existed) is replaced whole, once.

The block states the command, the date, the commit, the machine (CPUs, memory), the load average before
and after the run (the machine may be shared: absolute figures are then noisy, ratios within one run
are what compare) and the versions of the packages that did the work.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "BENCHMARKS.md"
HEADER = ("# Benchmarks\n\nEvery figure below comes from the command printed with it, run on the machine "
          "described in its section. Ratios compare against a baseline measured in the same run.\n")
PACKAGES = ("torch", "transformers", "ray", "lancedb", "numpy")


def snapshot() -> dict:
    """Conditions at the start of a run: pass it to :func:`write_section` as ``before``."""
    return {"load": os.getloadavg(), "start": dt.datetime.now()}


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def commit() -> str:
    """Short commit of the tree, marked when the benchmarked code (platform/, bench/) has local changes."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "platform", "bench"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    return head + (" with local changes" if dirty else "")


def versions() -> str:
    found = [f"Python {platform.python_version()}"]
    for name in PACKAGES:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def machine() -> str:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = float("nan")
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"{platform.machine()}, {cpus} CPUs, {mem:.0f} GiB memory, {gpu}"


def local_ray(num_cpus: int) -> None:
    """Start a local Ray of ``num_cpus`` CPUs; on a loaded machine its raylet may need more than the default
    wait to register, so the wait is longer (start-up only, nothing measured depends on it)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "300")
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def ray_threads(cpus: int) -> int:
    """Torch threads in a Ray actor that reserves ``cpus`` CPUs (what a Serve replica or an ingest actor gets)."""
    import ray

    @ray.remote(num_cpus=cpus)
    class Probe:
        def threads(self) -> int:
            import torch

            return torch.get_num_threads()

    probe = Probe.remote()
    try:
        return ray.get(probe.threads.remote())
    finally:
        ray.kill(probe)


def _load(values) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def conditions(command: str, before: dict | None = None) -> str:
    """The generated header of a section: command, date, commit, machine, load, versions."""
    now = dt.datetime.now()
    lines = [f"Command: `{command}`  ",
             f"Measured {now.date().isoformat()} at commit {commit()} on {machine()}.  "]
    load = f"Load average (1 / 5 / 15 min): {_load(os.getloadavg())} at the end"
    if before:
        minutes = (now - before["start"]).total_seconds() / 60
        load = (f"Load average (1 / 5 / 15 min): {_load(before['load'])} at the start, {_load(os.getloadavg())} at "
                f"the end; the run took {minutes:.0f} min")
    lines += [load + ".  ", f"{versions()}."]
    return "\n".join(lines)


def write_section(title: str, command: str, body: str, path: Path = DOC, before: dict | None = None) -> None:
    """Put the generated block of ``## title`` into the document; text outside its markers is kept."""
    text = path.read_text() if path.exists() else HEADER
    name = slug(title)
    begin, end = f"<!-- bench:{name} begin -->", f"<!-- bench:{name} end -->"
    block = f"{begin}\n{conditions(command, before)}\n\n{body.strip()}\n{end}"
    marked = re.compile(rf"{re.escape(begin)}\n.*?{re.escape(end)}", re.S)
    unmarked = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if marked.search(text):
        text = marked.sub(lambda _: block, text, count=1)
    elif unmarked.search(text):
        text = unmarked.sub(lambda _: f"## {title}\n\n{block}\n\n", text, count=1)
    else:
        text = text.rstrip() + f"\n\n## {title}\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)

"""Write a benchmark's figures into docs/BENCHMARKS.md, replacing only that benchmark's section."""

from __future__ import annotations

import datetime as dt
import platform
import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"
HEADER = ("# Benchmarks\n\nEvery figure below comes from the command printed with it, run on the machine "
          "described in its section. Ratios compare against a baseline measured in the same run.\n")


def machine() -> str:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, {device}"


def write_section(title: str, command: str, body: str, path: Path = DOC) -> None:
    """Replace (or append) the ``## title`` section of the benchmarks document."""
    text = path.read_text() if path.exists() else HEADER
    stamp = dt.date.today().isoformat()
    section = (f"## {title}\n\nCommand: `{command}`  \nMeasured {stamp} on {machine()}.\n\n"
               f"{body.strip()}\n")
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)

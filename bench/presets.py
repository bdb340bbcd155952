"""The model-size axis of the benchmarks: config overrides of a model preset, and its parameter count.

Presets are random offline models (omniret.models.tiny.PRESETS: tiny, 30m, 150m, ...), each built once
in its own folder under .omniret/models/.
"""

from __future__ import annotations

import math
from pathlib import Path


def preset_overrides(preset: str) -> list[str]:
    """Config overrides that select a model preset (the tiny one keeps the default folder)."""
    return [] if preset == "tiny" else [f"model.tiny_preset={preset}", f"model.tiny_dir=.omniret/models/{preset}"]


def param_count(checkpoint: str | Path) -> int:
    """Parameters stored in a checkpoint's model.safetensors, read from the tensor shapes only."""
    from safetensors import safe_open

    with safe_open(str(Path(checkpoint) / "model.safetensors"), framework="pt") as f:
        return sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())  # noqa: SIM118


def describe(preset: str, checkpoint: str | Path) -> str:
    """``30m (32.7M)``: the preset and its measured size, for table rows."""
    return f"{preset} ({param_count(checkpoint) / 1e6:.1f}M)" if preset != "tiny" else \
        f"tiny ({param_count(checkpoint) / 1e6:.2f}M)"

"""The supported Qwen-VL backbone families and how to recognise a checkpoint's family."""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Family:
    name: str
    model_type: str  # config.json "model_type"
    config: str  # transformers class names, imported on use (transformers is slow to import)
    model: str
    processor_name: str
    uses_timestamps: bool  # Qwen3-VL: one "<t seconds>" vision block per temporal patch of a video
    uses_second_per_grid: bool  # Qwen2.5-VL: temporal rope spacing from seconds per temporal patch

    def config_class(self):
        return getattr(importlib.import_module("transformers"), self.config)

    def model_class(self):
        return getattr(importlib.import_module("transformers"), self.model)


FAMILIES: dict[str, Family] = {
    f.name: f for f in (
        Family("qwen2_vl", "qwen2_vl", "Qwen2VLConfig", "Qwen2VLForConditionalGeneration",
               "Qwen2VLProcessor", uses_timestamps=False, uses_second_per_grid=False),
        Family("qwen2_5_vl", "qwen2_5_vl", "Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration",
               "Qwen2_5_VLProcessor", uses_timestamps=False, uses_second_per_grid=True),
        Family("qwen3_vl", "qwen3_vl", "Qwen3VLConfig", "Qwen3VLForConditionalGeneration",
               "Qwen3VLProcessor", uses_timestamps=True, uses_second_per_grid=False),
    )
}


def detect_family(path: str | Path) -> Family:
    """Read config.json's model_type; raise a clear error for anything that is not Qwen-VL."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: is {path} a HF checkpoint directory?")
    model_type = json.loads(file.read_text()).get("model_type")
    for family in FAMILIES.values():
        if family.model_type == model_type:
            return family
    raise ValueError(f"{path}: model_type {model_type!r} is not supported; "
                     f"expected one of {sorted(f.model_type for f in FAMILIES.values())}")

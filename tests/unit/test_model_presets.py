"""The benchmarks' model-size presets: 30m and 150m hold about 30M and 150M parameters, in every family."""

from __future__ import annotations

import pytest
import torch

from omniret.config import load_config
from omniret.models.families import FAMILIES
from omniret.models.tiny import PRESETS, build_tokenizer, tiny_config


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_size_presets(family):
    tokenizer = build_tokenizer()
    counts = {}
    for size in ("30m", "150m"):
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            model = FAMILIES[family].model_class()(tiny_config(family, tokenizer, size))
        counts[size] = sum(p.numel() for p in model.parameters())
    assert 28e6 <= counts["30m"] <= 40e6, counts
    assert 140e6 <= counts["150m"] <= 160e6, counts


def test_presets_are_configurable():
    assert {"30m", "150m"} <= set(PRESETS)
    assert load_config(None, ["model.tiny_preset=150m"]).model.tiny_preset == "150m"

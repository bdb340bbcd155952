"""Checkpoint state files load without unpickling: generators round-trip, pickled objects are refused."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch

from omniret.training import checkpoint as ckpt


class _Payload:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_rng_state_round_trips_without_pickle(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.normal()  # leave a cached Gaussian in NumPy's state
    ckpt.save_rng(tmp_path, rank=0)
    expected = (random.random(), np.random.normal(size=3).tolist(), torch.rand(3).tolist())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    assert ckpt.load_rng(tmp_path, rank=0)
    assert (random.random(), np.random.normal(size=3).tolist(), torch.rand(3).tolist()) == expected
    torch.load(tmp_path / ckpt.STATE_DIR / "rng_rank0.pt", weights_only=True)  # plain tensors and numbers


def test_pickled_objects_in_state_files_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "code-ran"
    state = tmp_path / ckpt.STATE_DIR
    state.mkdir()
    torch.save({"python": _Payload(marker)}, state / "rng_rank0.pt")
    assert not ckpt.load_rng(tmp_path, rank=0)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    ckpt.save_training_state(tmp_path, state={"step": 1}, optimizer=optimizer, scheduler=scheduler,
                             loss=torch.nn.Module(), info={"mode": "full"})
    assert ckpt.load_training_state(tmp_path, optimizer, scheduler, torch.nn.Module()) == {"step": 1}
    torch.save(_Payload(marker), state / "optimizer.pt")
    with pytest.raises(pickle.UnpicklingError):
        ckpt.load_training_state(tmp_path, optimizer, scheduler, torch.nn.Module())
    assert not marker.exists()

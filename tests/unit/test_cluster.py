"""What a job joining a cluster ships to its workers: the omniret package the driver imported."""

from __future__ import annotations

import json
from pathlib import Path

import omniret
from omniret.cluster import code_runtime_env

PACKAGE = str(Path(omniret.__file__).resolve().parent)


def test_ships_the_imported_package(monkeypatch):
    monkeypatch.delenv("OMNIRET_SHIP_CODE", raising=False)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"working_dir": "gcs://x.zip"}}))
    assert code_runtime_env() == {"py_modules": [PACKAGE]}
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    assert code_runtime_env() == {"py_modules": [PACKAGE]}


def test_leaves_py_modules_of_the_job_and_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"py_modules": ["gcs://m.zip"]}}))
    assert code_runtime_env() is None  # Ray refuses to merge the same field twice
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    monkeypatch.setenv("OMNIRET_SHIP_CODE", "0")
    assert code_runtime_env() is None

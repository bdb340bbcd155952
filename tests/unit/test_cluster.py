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


def test_local_workers_hide_the_placement_group_cleaners_state_api_warnings():
    """A local instance has no dashboard, so Ray Train's cleaner cannot reach the State API; its warnings
    are raised to ERROR in every worker by the setup hook (the hook's import path must stay valid)."""
    import importlib
    import logging

    from omniret.cluster import CLEANER_LOGGER, SETUP_HOOK, quiet_placement_group_cleaner

    module, _, name = SETUP_HOOK.rpartition(".")
    assert getattr(importlib.import_module(module), name) is quiet_placement_group_cleaner
    cleaner = importlib.import_module(CLEANER_LOGGER)  # the logger is that module's own
    assert cleaner.logger.name == CLEANER_LOGGER
    level = logging.getLogger(CLEANER_LOGGER).level
    try:
        quiet_placement_group_cleaner()
        assert not cleaner.logger.isEnabledFor(logging.WARNING) and cleaner.logger.isEnabledFor(logging.ERROR)
    finally:
        logging.getLogger(CLEANER_LOGGER).setLevel(level)

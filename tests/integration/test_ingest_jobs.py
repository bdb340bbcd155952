"""Ingest jobs of the API are shared by every ingress replica: a job accepted by one is answered by another."""

from __future__ import annotations

import time

import pytest

from omniret.index.store import IndexStore
from omniret.media import synth
from omniret.serving.api import InputError
from omniret.serving.ingestion import JOBS_ACTOR, JOBS_NAMESPACE, RayIngestor

pytestmark = pytest.mark.slow


@pytest.fixture
def jobs_actor_cleanup(ray_session):
    yield
    # The actor is detached: remove the one this test made so later tests start from a fresh one.
    ray_session.kill(ray_session.get_actor(JOBS_ACTOR, namespace=JOBS_NAMESPACE))


def test_a_job_accepted_by_one_replica_is_answered_by_another(ray_session, make_config, tmp_path,
                                                              jobs_actor_cleanup):
    image = tmp_path / "red.png"
    synth.draw_scene([{"shape": "circle", "color": "red", "x": 30, "y": 30, "size": 30}], size=(64, 64)).save(image)
    cfg = make_config("qwen2_vl", f"index.uri={tmp_path / 'db'}", "ingest.thumbnail_px=32")

    @ray_session.remote(num_cpus=0)
    def replica_submits(paths):  # another process, like a second ingress replica; it exits afterwards
        return RayIngestor(cfg).submit(paths)

    job_id = ray_session.get(replica_submits.remote([image]))
    other = RayIngestor(cfg)
    deadline = time.monotonic() + 300
    while (state := other.status(job_id))["status"] == "running":
        assert time.monotonic() < deadline, state
        time.sleep(0.5)
    assert state["status"] == "done", state
    assert state["files"] == [str(image)] and state["summary"]["items_written"] == 1
    assert IndexStore(cfg.index, fresh=True).count() == 1
    assert RayIngestor(cfg).status(job_id) == state  # and again, from yet another instance
    with pytest.raises(InputError) as missing:
        other.status("nope")
    assert missing.value.status == 404

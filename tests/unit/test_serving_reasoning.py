"""Reasoning in requests, in-process (no Ray): the merged reasoner call keeps faults with their request,
and the plain-process backend generates as the Reasoner does. The Serve app is tested in
tests/integration/test_serve.py and test_serve_hostile.py."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from omniret.items import Item
from omniret.models.embedder import Embedder
from omniret.reasoning.reasoner import Reasoner, Request
from omniret.serving.backend import LocalBackend
from omniret.serving.reasoning import reason_jobs, serve_template
from omniret.serving.routes import create_api


@pytest.fixture(scope="module")
def setup(make_config, backbones):
    cfg = make_config("qwen2_vl", "reason.max_new_tokens=4", "embed.progress=false")
    reasoner = Reasoner(backbones["qwen3_vl"], cfg.reason, cfg.media)
    embedder = Embedder(backbones["qwen2_vl"], cfg.media, cfg.embed, cfg.model.template)
    return {"cfg": cfg, "reasoner": reasoner, "embedder": embedder}


def test_an_unreadable_item_fails_only_its_own_request(setup, tmp_path):
    template = serve_template(setup["cfg"].reason)
    jobs = [([Item(text="a red circle", name="input[0]")], 0),
            ([Item(text="ok", name="input[0]"), Item(images=[str(tmp_path / "gone.png")], name="input[1]")], 0),
            ([Item(text="two squares", name="input[0]")], 0)]
    outcomes = reason_jobs(setup["reasoner"], template, jobs)
    assert [o.status for o in outcomes] == [200, 400, 200]
    assert outcomes[1].error_source.startswith("input[1] ")  # the item that failed, by name
    want = setup["reasoner"].generate([Request(Item(text=t), template) for t in ("a red circle", "two squares")])
    assert [o.values for o in (outcomes[0], outcomes[2])] == [[{"text": e.text, "truncated": e.truncated}]
                                                              for e in want]


def test_the_in_process_backend_generates_then_embeds(setup):
    cfg, reasoner, embedder = setup["cfg"], setup["reasoner"], setup["embedder"]
    client = TestClient(create_api(LocalBackend(embedder, reasoner=reasoner), cfg))
    response = client.post("/v1/embeddings", json={"input": "a red circle", "reasoning": "generate",
                                                   "encoding_format": "float"})
    assert response.status_code == 200, response.text
    entry = response.json()["data"][0]
    ecr = reasoner.generate([Request(Item(text="a red circle"), serve_template(cfg.reason))])[0]
    assert entry["reasoning"] == {"text": ecr.text, "truncated": True}  # 4 tokens: never reaches </think>
    want = embedder.encode([Item(text="a red circle", reasoning=ecr.text)], progress=False)[0]
    np.testing.assert_allclose(entry["embedding"], want, atol=1e-5)
    models = client.get("/v1/models").json()["data"]
    assert [m["task"] for m in models] == ["embedding", "reasoning"]
    assert client.get("/healthz").json()["deployments"] == {"embedder": "ok", "reranker": "absent", "reasoner": "ok"}

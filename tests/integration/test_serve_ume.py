"""Real Ray Serve on 127.0.0.1: /v1/embeddings with ``mode`` (disc, gen, auto) on a UME-R1 checkpoint gives the
in-process vectors; ``mode`` to a checkpoint without the tokens is a 400 naming the field."""

from __future__ import annotations

import shutil

import httpx
import numpy as np
import pytest

from omniret.models.gen_tokens import add_embedding_tokens
from omniret.models.tiny import init_tiny_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def apps(serve_url, tmp_path_factory, make_config, tiny_dirs):
    """Two applications: a UME-R1 checkpoint under /ume, the plain tiny checkpoint under /plain."""
    from ray import serve

    from omniret.serving.app import build_app

    root = tmp_path_factory.mktemp("served-ume")
    ckpt = root / "ume"
    model, tok = init_tiny_model("qwen2_vl", 0, "tiny")
    add_embedding_tokens(model, tok, "qwen2_vl")
    model.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    shutil.copy2(tiny_dirs["qwen2_vl"] / "preprocessor_config.json", ckpt / "preprocessor_config.json")
    common = [f"rerank.model.path={tiny_dirs['qwen2_vl']}", "embed.progress=false", "ume.max_new_tokens=4",
              "serve.embedder.num_cpus=0.1", "serve.reranker.num_cpus=0.1", "serve.ingress.num_cpus=0.1"]
    cfgs = {"ume": make_config("qwen2_vl", f"model.path={ckpt}", f"index.uri={root / 'db-ume'}", *common),
            "plain": make_config("qwen2_vl", f"index.uri={root / 'db-plain'}", *common)}
    for name, cfg in cfgs.items():
        serve.run(build_app({"settings": cfg.model_dump()}), name=f"omniret-{name}", route_prefix=f"/{name}")
    yield {"url": serve_url, "cfg": cfgs["ume"]}
    for name in cfgs:
        serve.delete(f"omniret-{name}")


def test_modes_give_the_in_process_vectors(apps):
    from omniret.eval.ume import load_view

    view = load_view(apps["cfg"])
    inputs = ["a red circle", "two blue squares"]
    generated = view.generate(inputs, max_new_tokens=4)
    want = {"disc": view.disc_embed(inputs), "gen": generated.embeddings, "auto": generated.auto()}
    for mode, vectors in want.items():
        response = httpx.post(f"{apps['url']}/ume/v1/embeddings", json={"input": inputs, "mode": mode,
                                                                        "encoding_format": "float"}, timeout=120)
        assert response.status_code == 200, response.text
        got = np.array([d["embedding"] for d in response.json()["data"]])
        np.testing.assert_allclose(got, vectors, atol=1e-4, err_msg=mode)
    assert not np.allclose(want["disc"], want["gen"], atol=1e-3)  # the modes really differ
    plain = httpx.post(f"{apps['url']}/ume/v1/embeddings", json={"input": inputs}, timeout=120)
    assert plain.status_code == 200  # no mode: the ordinary embedder, as before


def test_mode_to_a_checkpoint_without_the_tokens_is_a_400_naming_mode(apps):
    response = httpx.post(f"{apps['url']}/plain/v1/embeddings", json={"input": "a red circle", "mode": "gen"},
                          timeout=60)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "mode" and "UME-R1" in error["message"]
    bad = httpx.post(f"{apps['url']}/ume/v1/embeddings", json={"input": "x", "mode": "think"}, timeout=60)
    assert bad.status_code == 422 and "mode" in bad.json()["error"]["message"]
    ok = httpx.post(f"{apps['url']}/plain/v1/embeddings", json={"input": "a red circle"}, timeout=60)
    assert ok.status_code == 200

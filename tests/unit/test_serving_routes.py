"""The HTTP routes on the tiny model in-process (no Ray): contract, equality with the embedder, errors."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serving_fixtures import build_index, data_uri, png_bytes

from omniret.index.store import IndexStore
from omniret.items import Item, PageRef
from omniret.media import synth
from omniret.models.embedder import Embedder
from omniret.models.reranker import Reranker
from omniret.serving.backend import LocalBackend
from omniret.serving.routes import create_api


@pytest.fixture(scope="module")
def setup(tmp_path_factory, make_config, backbones):
    root = tmp_path_factory.mktemp("serve")
    cfg = make_config("qwen2_vl", f"index.uri={root / 'db'}", f"serve.allowed_roots=[{root / 'media'}]",
                      "serve.max_request_bytes=400000", "serve.max_inputs=4", "media.max_image_pixels=250000",
                      "serve.max_video_frames=16", "embed.progress=false", "index.read_consistency_s=0")
    embedder = Embedder(backbones["qwen2_vl"], cfg.media, cfg.embed, cfg.model.template)
    reranker = Reranker(backbones["qwen2_vl"], cfg.media, cfg.rerank)
    ids = build_index(cfg, embedder, root / "media")
    video = synth.write_moving_video(root / "media" / "move.mp4", shape="circle", color="red", direction="left",
                                     num_frames=16, size=(64, 64), fps=8)
    pdf = synth.write_pdf(root / "media" / "doc.pdf", ["first page text", "second page text"])
    app = create_api(LocalBackend(embedder, reranker), cfg, IndexStore(cfg.index))
    return {"client": TestClient(app), "embedder": embedder, "reranker": reranker, "root": root, "ids": ids,
            "video": video, "pdf": pdf, "cfg": cfg}


def _fill(value, names: dict[str, str]):
    """Put the fixture's paths into parametrized payloads."""
    if isinstance(value, dict):
        return {k: _fill(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, names) for v in value]
    if isinstance(value, str):
        for name, path in names.items():
            value = value.replace(name, path)
    return value


def _vectors(body: dict) -> np.ndarray:
    return np.array([d["embedding"] for d in body["data"]], dtype=np.float32)


def test_embeddings_equal_the_in_process_embedder(setup):
    red = Image.new("RGB", (64, 64), "red")
    payload = {"input": ["a red circle", {"content": [{"type": "image_url", "image_url": {"url": data_uri(png_bytes(red))}},
                                                      {"type": "text", "text": "a red square"}]},
                         {"content": [{"type": "pdf_page", "pdf_page": {"url": str(setup["pdf"]), "page": 1}}]}]}
    response = setup["client"].post("/v1/embeddings", json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    expected = setup["embedder"].encode(["a red circle", Item(text="a red square", images=[red]),
                                         Item(page=PageRef(str(setup["pdf"]), 1))])
    np.testing.assert_allclose(_vectors(body), expected, atol=1e-5)
    assert [d["index"] for d in body["data"]] == [0, 1, 2] and body["object"] == "list"


def test_base64_encoding_and_dimensions(setup):
    body = setup["client"].post("/v1/embeddings", json={"input": "hello", "encoding_format": "base64",
                                                         "dimensions": 16}).json()
    vector = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    full = setup["embedder"].encode(["hello"])[0]
    np.testing.assert_allclose(vector, full[:16] / np.linalg.norm(full[:16]), atol=1e-5)


def test_rerank_orders_documents_by_score(setup):
    docs = ["a red circle", "a blue square", "something else entirely"]
    body = setup["client"].post("/v1/rerank", json={"query": "red circle", "documents": docs, "top_n": 2,
                                                    "return_documents": True}).json()
    scores = setup["reranker"].score("red circle", docs)
    expected = np.argsort(-scores)[:2].tolist()
    assert [r["index"] for r in body["results"]] == expected
    assert body["results"][0]["document"] == {"text": docs[expected[0]]}
    np.testing.assert_allclose([r["relevance_score"] for r in body["results"]], scores[expected], atol=1e-5)


def test_search_finds_an_indexed_image_first(setup):
    path = setup["root"] / "media" / "blue_square.png"
    body = setup["client"].post("/search", json={"image": data_uri(path.read_bytes()), "top_k": 3}).json()
    assert body["results"][0]["id"] == setup["ids"]["blue_square.png"]
    assert body["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert body["results"][0]["thumbnail"].startswith("data:image/jpeg;base64,")
    reranked = setup["client"].post("/search", json={"text": "a green triangle", "mode": "hybrid", "rerank": True,
                                                     "rerank_top_n": 4, "top_k": 2}).json()
    assert len(reranked["results"]) == 2 and all(r["rerank_score"] is not None for r in reranked["results"])
    scores = [r["rerank_score"] for r in reranked["results"]]
    assert scores == sorted(scores, reverse=True)
    filtered = setup["client"].post("/search", json={"text": "circle", "modality": ["page"]}).json()
    assert filtered["results"] == []
    # This index has no multivector column: the request is refused, naming it.
    refused = setup["client"].post("/search", json={"text": "circle", "multivector": True})
    assert refused.status_code == 400 and "no 'multivector' column" in refused.text


def test_multivector_search_finds_an_indexed_image_first(setup, tmp_path):
    import datetime as dt

    import pyarrow as pa

    from omniret.index.schema import item_id, items_schema

    cfg = setup["cfg"].model_copy(update={"index": setup["cfg"].index.model_copy(update={"uri": str(tmp_path / "mv")})})
    paths = sorted((setup["root"] / "media").glob("*.png"))
    both = setup["embedder"].encode([Item(images=[str(p)]) for p in paths], progress=False, multivector=(4, "segments"))
    schema = items_schema(both.shape[-1], setup["embedder"].model_id, (4, "segments"))
    store = IndexStore(cfg.index, fresh=True)
    store.create(both.shape[-1], setup["embedder"].model_id, (4, "segments"))
    store.upsert(pa.Table.from_pylist([
        {"id": item_id(f"{i:064x}", "image"), "source_uri": str(p), "sha256": f"{i:064x}", "modality": "image",
         "vector": v[0].tolist(), "multivector": v[1:].tolist(), "model": setup["embedder"].model_id,
         "created_at": dt.datetime.now(dt.timezone.utc)} for i, (p, v) in enumerate(zip(paths, both, strict=True))],
        schema=schema))
    client = TestClient(create_api(LocalBackend(setup["embedder"]), cfg, IndexStore(cfg.index)))
    target = paths[1]
    body = client.post("/search", json={"image": data_uri(target.read_bytes()), "multivector": True, "top_k": 2}).json()
    assert body["results"][0]["source_uri"] == str(target)
    assert body["results"][0]["score"] == pytest.approx(4.0, abs=1e-4)


@pytest.mark.parametrize(("payload", "status", "param"), [
    ({"input": "x", "bogus": 1}, 422, "bogus"),
    ({"input": 5}, 422, "input"),
    ({"input": [{"content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}]}, 400,
     "input[0].content[0].image_url"),
    ({"input": [{"content": [{"type": "image_url", "image_url": {"url": "/etc/passwd"}}]}]}, 403,
     "input[0].content[0].image_url"),
    ({"input": [{"content": [{"type": "image_url", "image_url": {"url": "ROOT/../../etc/hosts"}}]}]}, 403,
     "input[0].content[0].image_url"),
    ({"input": [{"content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}, 400,
     "input[0].content[0].image_url"),
    ({"input": [{"content": [{"type": "video_url", "video_url": {"url": "VIDEO", "num_frames": 500}}]}]}, 400,
     "input[0].content[0].video_url.num_frames"),
    ({"input": [{"content": [{"type": "image_url", "image_url": {"url": "VIDEO"}}]}]}, 415,
     "input[0].content[0].image_url"),
    ({"input": ["a", "b", "c", "d", "e"]}, 413, "input"),
    ({"input": "x", "model": "other"}, 404, "model"),
    ({"input": "x", "dimensions": 100000}, 400, "dimensions"),
    ({"input": "x", "mode": "disc", "reasoning": "provided", "reasoning_text": "y"}, 400, "reasoning"),
    ({"input": "x", "mode": "gen"}, 400, "mode"),
])
def test_malformed_requests_get_json_errors_naming_the_field(setup, payload, status, param):
    payload = _fill(payload, {"ROOT": str(setup["root"] / "media"), "VIDEO": str(setup["video"])})
    response = setup["client"].post("/v1/embeddings", json=payload)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"].startswith(param)
    assert setup["client"].post("/v1/embeddings", json={"input": "still serving"}).status_code == 200


def test_oversized_image_and_body_are_refused(setup):
    big = Image.new("RGB", (600, 600), "red")  # 360k pixels > media.max_image_pixels
    part = {"type": "image_url", "image_url": {"url": data_uri(png_bytes(big))}}
    response = setup["client"].post("/v1/embeddings", json={"input": [{"content": [part]}]})
    assert response.status_code == 400 and response.json()["error"]["param"].startswith("input[0]")
    noisy = np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    part = {"type": "image_url", "image_url": {"url": data_uri(png_bytes(Image.fromarray(noisy)))}}
    response = setup["client"].post("/v1/embeddings", json={"input": [{"content": [part]}]})
    assert response.status_code == 413 and response.json()["error"]["param"] == "body"


def test_models_health_and_bearer_token(setup, make_config):
    client = setup["client"]
    assert client.get("/v1/models").json()["data"][0]["id"] == setup["embedder"].model_id
    assert client.get("/healthz").json()["index_rows"] == 4
    cfg = setup["cfg"].model_copy(update={"serve": setup["cfg"].serve.model_copy(update={"api_key": "s3cret"})})
    locked = TestClient(create_api(LocalBackend(setup["embedder"]), cfg))
    assert locked.post("/v1/embeddings", json={"input": "x"}).status_code == 401
    assert locked.get("/healthz").status_code == 200
    ok = locked.post("/v1/embeddings", json={"input": "x"}, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200

"""int8 and packed-binary embeddings: hand values of the encoders, and the round trip through
``/v1/embeddings`` (routes on the tiny model in-process) and the client's decoder."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from fastapi.testclient import TestClient

from omniret.models.embedder import Embedder
from omniret.models.quantization import pack_binary, to_int8, unpack_binary
from omniret.serving.backend import LocalBackend
from omniret.serving.client import decode_embedding
from omniret.serving.routes import create_api


def test_int8_scales_each_vector_to_its_largest_component():
    out = to_int8(np.array([[0.5, -0.25, 0.1, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    assert out.dtype == np.int8
    assert out.tolist() == [[127, -64, 25, 0], [0, 0, 0, 0]]  # 0.5 -> 127; -63.5 rounds to even; zero row stays 0


def test_binary_packs_big_endian_and_unpacks():
    x = np.array([[0.3, -1, 0, 2, -0.1, -0.1, -0.1, 0.5, 1.0]])
    packed = pack_binary(x)
    assert packed.tolist() == [[0b10110001, 0b10000000]]  # dim 0 is the top bit; the last byte is padded
    assert unpack_binary(packed, 9).tolist() == [[1, -1, 1, 1, -1, -1, -1, 1, 1]]


@pytest.fixture(scope="module")
def api(make_config, backbones, tmp_path_factory):
    cfg = make_config("qwen2_vl", f"index.uri={tmp_path_factory.mktemp('db')}", "embed.progress=false")
    embedder = Embedder(backbones["qwen2_vl"], cfg.media, cfg.embed, cfg.model.template)
    return TestClient(create_api(LocalBackend(embedder, None), cfg)), embedder


@pytest.mark.parametrize("dims", [None, 12])
def test_int8_and_binary_round_trip_through_the_api(api, dims):
    client, embedder = api
    texts = ["a red circle", "two blue squares"]
    floats = embedder.encode(texts, dimensions=dims)
    for fmt in ("int8", "binary"):
        response = client.post("/v1/embeddings", json={"input": texts, "encoding_format": fmt, "dimensions": dims})
        assert response.status_code == 200, response.text
        got = [decode_embedding(d["embedding"], fmt, floats.shape[1]) for d in response.json()["data"]]
        if fmt == "int8":
            np.testing.assert_array_equal(np.stack(got), to_int8(floats))
            cos = [float(g @ f / np.linalg.norm(g)) for g, f in zip(got, floats, strict=True)]
            assert min(cos) > 0.99
        else:
            np.testing.assert_array_equal(np.stack(got), np.where(floats >= 0, 1.0, -1.0))
            packed = base64.b64decode(response.json()["data"][0]["embedding"])
            assert len(packed) == -(-floats.shape[1] // 8)  # ceil(D / 8) bytes


def test_unknown_format_is_refused_and_formats_are_documented(api):
    client, _ = api
    response = client.post("/v1/embeddings", json={"input": "x", "encoding_format": "int4"})
    assert response.status_code in (400, 422) and response.json()["error"]["param"].startswith("encoding_format")
    schema = client.get("/openapi.json").json()["components"]["schemas"]["EmbeddingsRequest"]
    field = schema["properties"]["encoding_format"]
    assert set(field["enum"]) == {"float", "base64", "int8", "binary"} and "packbits" in field["description"]

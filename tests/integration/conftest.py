"""The real Serve application on 127.0.0.1, one per test module that asks for it.

Serve's HTTP proxy starts once per session (its port cannot change while it runs); each module gets
its own application and index, configured by the module's ``SERVICE_OVERRIDES`` list (``{root}``: the
module's folder, ``{tiny[<family>]}``: a tiny checkpoint).
"""

from __future__ import annotations

import pytest
from netutil import free_port
from serving_fixtures import build_index

from omniret.models.embedder import Embedder


@pytest.fixture(scope="session")
def serve_url(ray_session):
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 120})
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def service(request, serve_url, tmp_path_factory, make_config, backbones, tiny_dirs):
    from ray import serve

    from omniret.serving.app import build_app

    root = tmp_path_factory.mktemp("served")
    cfg = make_config("qwen2_vl", f"index.uri={root / 'db'}", "embed.progress=false",
                      # Leave room on the 2-CPU test cluster for an ingest run (decode task: 1 CPU).
                      "serve.embedder.num_cpus=0.25", "serve.reranker.num_cpus=0.25", "serve.ingress.num_cpus=0.1",
                      "ingest.embed_cpus=0.25", f"serve.upload_dir={root / 'uploads'}",
                      "serve.max_video_frames=16", "media.max_image_pixels=250000", "index.read_consistency_s=0",
                      *(o.format(root=root, tiny=tiny_dirs) for o in getattr(request.module, "SERVICE_OVERRIDES", ())))
    embedder = Embedder(backbones["qwen2_vl"], cfg.media, cfg.embed, cfg.model.template)
    ids = build_index(cfg, embedder, root / "media")
    serve.run(build_app({"settings": cfg.model_dump()}), name="omniret-test", route_prefix="/")
    yield {"url": serve_url, "embedder": embedder, "ids": ids, "root": root, "cfg": cfg}
    serve.delete("omniret-test")

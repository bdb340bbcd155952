"""``build_app(args)``: the one import path for ``serve run``, serve config files and Kubernetes.

    serve run omniret.serving.app:build_app config=ray_jobs/configs/serve.yaml
    omniret serve serve.port=8000            # local Ray, blocks until Ctrl-C

``args`` are typed (:class:`AppArgs`): a YAML config path, inline ``settings`` (what a RayService's
serveConfigV2 carries) and ``overrides`` (``key.sub=value``), applied in that order.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from omniret.config import OmniretConfig, load_config

log = logging.getLogger(__name__)


class AppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: str | None = Field(None, description="YAML configuration file")
    settings: dict[str, Any] = Field(default_factory=dict, description="inline configuration")
    overrides: list[str] = Field(default_factory=list, description="key.sub=value overrides")

    @field_validator("overrides", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        # `serve run ... overrides="a=1 b=2"` passes one string.
        return value.split() if isinstance(value, str) else value


def resolve_config(args: AppArgs | dict[str, Any]) -> OmniretConfig:
    args = AppArgs.model_validate(args) if isinstance(args, dict) else args
    return load_config(args.config, args.overrides, base=args.settings)


def pin_paths(cfg: OmniretConfig) -> OmniretConfig:
    """Make local paths absolute and build the tiny model once, before replicas start.

    Replicas may run in another working directory, and two replicas building the tiny model at
    once would race on its files.
    """
    from omniret.models.backbone import checkpoint_path

    def absolute(value: str) -> str:
        return value if "://" in value else str(Path(value).expanduser().resolve())

    data = cfg.model_dump()
    for section, model in ((data, cfg.model), (data["rerank"], cfg.rerank.model)):  # embedder, reranker
        if not model.path:
            section["model"]["path"] = str(checkpoint_path(model).resolve())
    data["index"]["uri"] = absolute(cfg.index.uri)
    data["serve"]["upload_dir"] = absolute(cfg.serve.upload_dir)
    data["serve"]["allowed_roots"] = [absolute(r) for r in cfg.serve.allowed_roots]
    return OmniretConfig.model_validate(data)


def build_app(args: dict[str, Any]):
    """The Serve application: SearchIngress over the Embedder and Reranker deployments."""
    from omniret.serving.deployments import EmbedderDeployment, RerankerDeployment, SearchIngress

    cfg = pin_paths(resolve_config(args))
    data = cfg.model_dump()
    serve_cfg = cfg.serve
    embedder = EmbedderDeployment.options(**serve_cfg.embedder.options()).bind(data)
    reranker = RerankerDeployment.options(**serve_cfg.reranker.options()).bind(data)
    return SearchIngress.options(**serve_cfg.ingress.options(default_ongoing=256)).bind(embedder, reranker, data)


def run_local(cfg: OmniretConfig, address: str = "local", blocking: bool = True) -> str:
    """Start (or join) Ray, run the application on serve.host:serve.port; returns the base URL."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    serve.run(build_app({"settings": cfg.model_dump()}), name=cfg.serve.app_name, route_prefix="/")
    url = f"http://{cfg.serve.host}:{cfg.serve.port}"
    log.info("serving %s (OpenAPI docs at %s/docs)", url, url)
    if blocking:
        import time

        print(f"omniret API at {url}  (docs: {url}/docs); Ctrl-C stops", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            serve.shutdown()
    return url

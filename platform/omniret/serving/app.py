"""``build_app(args)``: the one import path for ``serve run``, serve config files and Kubernetes.

    serve run omniret.serving.app:build_app config=ray_jobs/configs/serve.yaml
    omniret serve serve.port=8000            # local Ray, blocks until Ctrl-C

``omniret serve`` starts a local Ray with enough logical CPUs for the deployments (and one upload
ingest), and refuses at once, naming the keys to change, a cluster the deployments do not fit.

``args`` are typed (:class:`AppArgs`): a YAML config path, inline ``settings`` (what a RayService's
serveConfigV2 carries) and ``overrides`` (``key.sub=value``), applied in that order.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from omniret.config import OmniretConfig, load_config
from omniret.errors import ConfigError

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
    models = [(data, cfg.model), (data["rerank"], cfg.rerank.model)]  # embedder, reranker
    if cfg.serve.reasoner_enabled:
        models.append((data["reason"], cfg.reason.model))
    for section, model in models:
        if not model.path:
            section["model"]["path"] = str(checkpoint_path(model).resolve())
    data["index"]["uri"] = absolute(cfg.index.uri)
    data["serve"]["upload_dir"] = absolute(cfg.serve.upload_dir)
    data["serve"]["allowed_roots"] = [absolute(r) for r in cfg.serve.allowed_roots]
    return OmniretConfig.model_validate(data)


def build_app(args: dict[str, Any]):
    """The Serve application: SearchIngress over the Embedder and Reranker deployments, and the
    Reasoner deployment when ``serve.reasoner_enabled``."""
    from omniret.serving.deployments import (
        EmbedderDeployment,
        ReasonerDeployment,
        RerankerDeployment,
        SearchIngress,
    )

    cfg = pin_paths(resolve_config(args))
    data = cfg.model_dump()
    serve_cfg = cfg.serve
    embedder = EmbedderDeployment.options(**serve_cfg.embedder.options()).bind(data)
    reranker = RerankerDeployment.options(**serve_cfg.reranker.options()).bind(data)
    reasoner = (ReasonerDeployment.options(**serve_cfg.reasoner.options()).bind(data)
                if serve_cfg.reasoner_enabled else None)
    return SearchIngress.options(**serve_cfg.ingress.options(default_ongoing=256)).bind(embedder, reranker, data,
                                                                                       reasoner)


def resource_demand(cfg: OmniretConfig) -> dict[str, float]:
    """Logical CPUs and GPUs the deployments reserve (at their starting replica counts), and the CPUs
    one upload ingest reserves (a decode task and an embedding actor)."""
    deployments = [cfg.serve.embedder, cfg.serve.reranker, cfg.serve.ingress]
    if cfg.serve.reasoner_enabled:
        deployments.append(cfg.serve.reasoner)

    def replicas(d) -> int:
        return max(1, d.min_replicas) if d.num_replicas == "auto" else d.num_replicas

    return {"serve_cpus": sum(d.num_cpus * replicas(d) for d in deployments),
            "serve_gpus": sum(d.num_gpus * replicas(d) for d in deployments),
            "ingest_cpus": 1.0 + cfg.ingest.embed_cpus}


def check_fits(cfg: OmniretConfig, resources: dict[str, float]) -> None:
    """Fail at once, saying what to change, when the deployments cannot all be placed: Serve would
    otherwise wait for resources forever with only a scheduling warning in its own log."""
    demand = resource_demand(cfg)
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    s = cfg.serve
    reasoner = f", serve.reasoner.num_cpus={s.reasoner.num_cpus:g}" if s.reasoner_enabled else ""
    if demand["serve_cpus"] > cpus + 1e-9:
        raise ConfigError(
            f"the deployments reserve {demand['serve_cpus']:g} CPUs (serve.embedder.num_cpus={s.embedder.num_cpus:g}, "
            f"serve.reranker.num_cpus={s.reranker.num_cpus:g}, serve.ingress.num_cpus={s.ingress.num_cpus:g}"
            f"{reasoner}, times their replicas) but this Ray cluster has {cpus:g}; lower those keys or the replica "
            "counts, or add CPUs to the cluster")
    if demand["serve_gpus"] > gpus + 1e-9:
        gpu_keys = "serve.embedder.num_gpus / serve.reranker.num_gpus" + (
            " / serve.reasoner.num_gpus" if s.reasoner_enabled else "")
        raise ConfigError(f"the deployments reserve {demand['serve_gpus']:g} GPUs but this Ray cluster has "
                          f"{gpus:g}; set {gpu_keys} to fit")


def start_ray(cfg: OmniretConfig, address: str = "local") -> None:
    """Join ``address``, or start a local Ray with enough logical CPUs for the deployments and one
    upload ingest: logical CPUs only gate scheduling, and on a small machine the cores are shared
    by the model threads anyway."""
    import ray

    from omniret.cluster import ensure_ray

    if ray.is_initialized():
        return
    if address != "local":
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
        return
    demand = resource_demand(cfg)
    cores = os.cpu_count() or 1
    needed = math.ceil(demand["serve_cpus"] + demand["ingest_cpus"] - 1e-9)
    cpus = max(cores, needed)
    if cpus > cores:
        log.info("starting Ray with %d logical CPUs on %d cores: the deployments reserve %g and an upload "
                 "ingest %g", cpus, cores, demand["serve_cpus"], demand["ingest_cpus"])
    ensure_ray(cpus)


def _deploy(cfg: OmniretConfig, url: str) -> None:
    from ray import serve

    # request_timeout_s: the HTTP proxy answers 408 instead of waiting forever on a stuck replica.
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port,
                              "request_timeout_s": cfg.serve.request_timeout_s})
    serve.run(build_app({"settings": cfg.model_dump()}), name=cfg.serve.app_name, route_prefix="/")
    log.info("serving %s (OpenAPI docs at %s/docs)", url, url)


def run_local(cfg: OmniretConfig, address: str = "local", blocking: bool = True) -> str:
    """Start (or join) Ray, run the application on serve.host:serve.port; returns the base URL."""
    import ray
    from ray import serve

    start_ray(cfg, address)
    check_fits(cfg, ray.cluster_resources())
    url = f"http://{cfg.serve.host}:{cfg.serve.port}"
    if not blocking:
        _deploy(cfg, url)
        return url
    import time

    try:
        _deploy(cfg, url)
        print(f"omniret API at {url}  (docs: {url}/docs); Ctrl-C stops", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass  # Ctrl-C, also while the deployments are still starting
    finally:
        serve.shutdown()
    return url

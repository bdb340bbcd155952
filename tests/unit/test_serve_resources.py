"""`omniret serve` sizes the local Ray it starts for its deployments, and refuses a cluster they do not fit."""

from __future__ import annotations

import pytest

from omniret.config import load_config
from omniret.errors import ConfigError
from omniret.serving.app import check_fits, resource_demand


def test_demand_of_the_serve_config():
    cfg = load_config("ray_jobs/configs/serve.yaml")
    # embedder 1 + reranker 1 + ingress 0.5 CPUs; an upload ingest: one decode task + one embedding actor
    assert resource_demand(cfg) == {"serve_cpus": 2.5, "serve_gpus": 0.0, "ingest_cpus": 2.0}
    auto = load_config(None, ["serve.embedder.num_replicas=auto", "serve.embedder.min_replicas=3"])
    assert resource_demand(auto)["serve_cpus"] == 3 * 1.0 + 1.0 + 0.5


def test_a_cluster_too_small_is_refused_naming_the_keys():
    cfg = load_config("ray_jobs/configs/serve.yaml")
    with pytest.raises(ConfigError, match=r"reserve 2\.5 CPUs.*serve\.embedder\.num_cpus=1.*has 2"):
        check_fits(cfg, {"CPU": 2.0})
    check_fits(cfg, {"CPU": 2.5})
    with pytest.raises(ConfigError, match="GPUs"):
        check_fits(load_config(None, ["serve.embedder.num_gpus=1"]), {"CPU": 8.0})


def test_the_reasoner_counts_only_when_deployed_and_is_named_when_it_does_not_fit():
    cfg = load_config("ray_jobs/configs/serve.yaml", ["serve.reasoner.num_cpus=0.5"])
    assert resource_demand(cfg)["serve_cpus"] == 2.5  # not deployed: not reserved
    on = load_config("ray_jobs/configs/serve.yaml", ["serve.reasoner_enabled=true", "serve.reasoner.num_cpus=0.5",
                                                     "serve.reasoner.num_gpus=1"])
    assert resource_demand(on) == {"serve_cpus": 3.0, "serve_gpus": 1.0, "ingest_cpus": 2.0}
    with pytest.raises(ConfigError, match=r"reserve 3 CPUs.*serve\.reasoner\.num_cpus=0\.5.*has 2\.5"):
        check_fits(on, {"CPU": 2.5, "GPU": 1.0})
    with pytest.raises(ConfigError, match=r"serve\.reasoner\.num_gpus"):
        check_fits(on, {"CPU": 3.0})
    check_fits(on, {"CPU": 3.0, "GPU": 1.0})

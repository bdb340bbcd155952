"""SAIL-style data balancing: k-means centroids, the Sinkhorn plan against a plain float64 reference,
the set similarity and the softmax weights."""

from __future__ import annotations

import math

import numpy as np
import pytest

from omniret.training.balancing import balance_weights, kmeans, set_similarity, sinkhorn


def ref_sinkhorn(cost, eps, iters=20000):
    """Textbook scaling iterations u = a / (K v), v = b / (K^T u) in float64 (no log domain)."""
    n, m = cost.shape
    a, b = np.full(n, 1 / n), np.full(m, 1 / m)
    kernel = np.exp(-cost / eps)
    u, v = np.ones(n), np.ones(m)
    for _ in range(iters):
        u = a / (kernel @ v)
        v = b / (kernel.T @ u)
    return u[:, None] * kernel * v[None, :]


def test_sinkhorn_matches_the_scaling_reference_and_its_marginals():
    rng = np.random.default_rng(0)
    cost = rng.uniform(0, 2, (4, 6))
    plan = sinkhorn(cost, eps=0.2)
    np.testing.assert_allclose(plan, ref_sinkhorn(cost, 0.2), atol=1e-9)
    np.testing.assert_allclose(plan.sum(1), np.full(4, 1 / 4), atol=1e-9)
    np.testing.assert_allclose(plan.sum(0), np.full(6, 1 / 6), atol=1e-9)
    # small eps (log domain stays finite where exp(-cost/eps) underflows) approaches the OT plan
    hard = sinkhorn(np.array([[0.0, 1.0], [1.0, 0.0]]), eps=0.01)
    np.testing.assert_allclose(hard, [[0.5, 0.0], [0.0, 0.5]], atol=1e-12)
    with pytest.raises(ValueError, match="eps"):
        sinkhorn(cost, eps=0)


def test_set_similarity_by_hand():
    e = np.eye(3)
    assert set_similarity(e[:2], e[:2], eps=0.01) == pytest.approx(1.0, abs=1e-9)  # same centroids
    assert set_similarity(e[:1], e[1:2]) == pytest.approx(0.0)  # orthogonal
    # one train centroid, two val centroids at cosines 1 and 0: P is forced to (1/2, 1/2) -> 0.5
    assert set_similarity(e[:1], e[:2]) == pytest.approx(0.5)


def test_kmeans_finds_separated_clusters():
    rng = np.random.default_rng(1)
    means = np.array([[5.0, 0.0], [0.0, 5.0], [-5.0, -5.0]])
    x = np.concatenate([m + 0.1 * rng.normal(size=(30, 2)) for m in means])
    found = kmeans(x, 3, seed=0)
    assert sorted(map(tuple, np.round(found))) == sorted(map(tuple, means))
    assert len(kmeans(x[:2], 5)) == 2  # more clusters than points: the points
    with pytest.raises(ValueError, match="non-empty"):
        kmeans(np.zeros((0, 2)), 2)


def test_weights_are_a_softmax_of_the_mean_similarity():
    rng = np.random.default_rng(2)
    val = {"bench_a": np.array([[1.0, 0, 0]]) + 0.01 * rng.normal(size=(20, 3)),
           "bench_b": np.array([[0, 1.0, 0]]) + 0.01 * rng.normal(size=(20, 3))}
    train = {"near_a": np.array([[1.0, 0, 0]]) + 0.01 * rng.normal(size=(20, 3)),
             "far": np.array([[0, 0, 1.0]]) + 0.01 * rng.normal(size=(20, 3))}
    out = balance_weights(train, val, k=2, temperature=0.1)
    # reference from the pieces: mean over benchmarks of the similarity, then softmax(score / 0.1)
    want = {n: np.mean([set_similarity(kmeans(x, 2), kmeans(v, 2)) for v in val.values()]) for n, x in train.items()}
    assert {n: r["score"] for n, r in out.items()} == pytest.approx(want)
    total = sum(math.exp(s / 0.1) for s in want.values())
    assert {n: r["weight"] for n, r in out.items()} == pytest.approx({n: math.exp(s / 0.1) / total
                                                                       for n, s in want.items()})
    assert out["near_a"]["score"] == pytest.approx(0.5, abs=0.02) and abs(out["far"]["score"]) < 0.05
    assert out["near_a"]["weight"] > out["far"]["weight"]
    with pytest.raises(ValueError, match="temperature"):
        balance_weights(train, val, temperature=0)


def test_balance_command_writes_weights_for_the_training_groups(tiny_dirs, tmp_path, capsys):
    import yaml

    from omniret.cli import main
    from omniret.config import SyntheticConfig, load_config
    from omniret.data.synthetic import generate_benchmark

    generate_benchmark(tmp_path / "bench", SyntheticConfig(train_per_task=6, eval_queries=3,
                                                           tasks=["syn_cls_color", "syn_t2i"]))
    out = tmp_path / "weights.yaml"
    overrides = [f"model.path={tiny_dirs['qwen2_vl']}", f"data.train=[{tmp_path / 'bench' / 'train'}]",
                 f"eval.root={tmp_path / 'bench' / 'eval'}", "media.max_pixels=50176"]
    assert main(["balance", "--samples", "6", "--clusters", "2", "--temperature", "0.1", "--out", str(out),
                 *overrides]) == 0
    written = yaml.safe_load(out.read_text())["data"]
    assert written["weighting"] == "uniform" and set(written["weights"]) == {"image_classification", "syn_t2i"}
    assert sum(written["weights"].values()) == pytest.approx(1.0, abs=1e-5)
    assert "syn_t2i" in capsys.readouterr().out
    cfg = load_config(out, overrides)  # the file is a valid run configuration
    assert cfg.data.weights == written["weights"]

"""B3 batches: neighbour lists after the skipped ranks, bidirectional edges only, METIS communities of
exactly K, batches of |B|/K communities that cover every pair once per epoch and hold more similar
pairs than random batches; the sampler draws them; mining's per-query rule is now skip_top."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from omniret.data.mixing import Mixture
from omniret.data.schema import Pair, Side
from omniret.errors import ConfigError
from omniret.training.b3 import (
    balance,
    epoch_batches,
    fingerprint,
    group_communities,
    load_communities,
    mutual_graph,
    neighbour_lists,
    partition,
    save_communities,
)
from omniret.training.sampling import BatchSampler


def test_neighbours_skip_self_and_the_top_ranks_and_edges_must_be_mutual():
    scores = np.array([[9, 5, 4, 3],
                       [1, 9, 2, 8],
                       [5, 3, 9, 1],
                       [0, 7, 6, 9]], dtype=float)
    # row 0 without itself: 1, 2, 3; skip 1, keep 2 -> 2, 3
    assert neighbour_lists(scores, skip=1, keep=2) == [[2, 3], [2, 0], [1, 3], [2, 0]]
    assert neighbour_lists(scores, skip=0, keep=1) == [[1], [3], [0], [1]]
    # 0->2 and 2->... {1,3}: not mutual; 0<->3 mutual; 1<->2 mutual; 2<->3 mutual
    assert mutual_graph([[2, 3], [2, 0], [1, 3], [2, 0]]) == [[3], [2], [1, 3], [0, 2]]
    with_nan = neighbour_lists(np.array([[1.0, -np.inf, 0.5], [0.2, 1.0, 0.1], [0.3, 0.4, 1.0]]), 0, 5)
    assert with_nan[0] == [2]  # an unreadable target ranks nowhere


def test_balance_makes_parts_of_exactly_k_keeping_connected_nodes_together():
    # two triangles 0-1-2 and 3-4-5 plus a loose node 6, split unevenly as 5 + 2
    adjacency = [[1, 2], [0, 2], [0, 1], [4, 5], [3, 5], [3, 4], []]
    parts = balance([0, 0, 0, 0, 0, 1, 1], adjacency, size=3)
    assert sorted(len(p) for p in parts) == [1, 3, 3]
    assert sorted(parts) == [[0, 1, 2], [3, 4, 5], [6]]
    assert sorted(itertools.chain(*parts)) == list(range(7))


def _clustered(n_clusters=8, per=6, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim))
    x = np.repeat(centres, per, axis=0) + 0.3 * rng.normal(size=(n_clusters * per, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    order = rng.permutation(len(x))  # clusters are not contiguous in the data
    return x[order]


def _in_batch_similarity(x, batches):
    sims = [x[i] @ x[j] for b in batches for i, j in itertools.combinations(b, 2)]
    return float(np.mean(sims))


def test_metis_batches_partition_the_data_and_are_harder_than_random_batches():
    x = _clustered()
    n, k, batch = len(x), 4, 8
    communities = group_communities(x, x, size=k, skip=0, keep=8, seed=0)
    assert [len(c) for c in communities] == [k] * (n // k)
    assert sorted(itertools.chain(*communities)) == list(range(n))
    for epoch in range(2):
        batches = epoch_batches(communities, batch, seed=0, epoch=epoch)
        assert [len(b) for b in batches] == [batch] * (n // batch)
        assert sorted(itertools.chain(*batches)) == list(range(n))  # every pair exactly once
        order = list(range(n))
        random.Random(epoch).shuffle(order)
        random_batches = [order[i:i + batch] for i in range(0, n, batch)]
        assert _in_batch_similarity(x, batches) > _in_batch_similarity(x, random_batches) + 0.1
    assert epoch_batches(communities, batch, seed=0, epoch=0) != epoch_batches(communities, batch, seed=0, epoch=1)
    assert partition([[]] * 5, 2) == [[0, 1], [2, 3], [4]]  # no mutual edges: still exact sizes


def _pairs(n, dataset="toy"):
    return [Pair(Side(text=f"q{i}"), [Side(text=f"t{i}")], dataset=dataset, task="image_retrieval", id=str(i))
            for i in range(n)]


def test_sampler_draws_whole_communities_and_checks_the_file(tmp_path):
    pairs = _pairs(12)
    mixture = Mixture(groups={"toy": pairs}, probabilities={"toy": 1.0})
    communities = [[0, 5, 6], [1, 2, 3], [4, 7, 11], [8, 9, 10]]
    path = save_communities(tmp_path / "b3.json", {"groups": {"toy": {"communities": communities,
                                                                       "fingerprint": fingerprint(pairs)}}})
    loaded = load_communities(path, mixture.groups)
    assert loaded == {"toy": communities}
    sampler = BatchSampler(mixture, batch_size=6, seed=1, steps_per_epoch=2, communities=loaded)
    batches = [sampler.next().indices for _ in range(2)]
    assert sorted(itertools.chain(*batches)) == list(range(12))
    for b in batches:
        assert sorted(sorted(c) for c in communities if set(c) <= set(b)) == sorted(
            sorted(c) for c in communities if set(c) & set(b))
    with pytest.raises(ConfigError, match="other pairs"):
        load_communities(path, {"toy": _pairs(12)[::-1]})
    with pytest.raises(ConfigError, match="needs communities"):
        load_communities(tmp_path / "none.json", mixture.groups)


@pytest.mark.slow
def test_a_b3_stage_builds_its_communities_and_trains_on_them(tiny_dirs, tmp_path):
    import yaml

    from omniret.config import SyntheticConfig
    from omniret.data.mixing import load_mixture
    from omniret.data.synthetic import generate_benchmark
    from omniret.training.logbook import read_rows
    from omniret.training.recipe import load_stages, run_stages

    bench = tmp_path / "bench"
    generate_benchmark(bench, SyntheticConfig(train_per_task=8, eval_queries=2, tasks=["syn_t2i"]))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"path": str(tiny_dirs["qwen2_vl"])}, "data": {"train": [str(bench / "train")]},
        "eval": {"root": str(bench / "eval")}, "media": {"max_pixels": 3136},
        "train": {"output_dir": str(tmp_path / "runs"), "mode": "full", "batch_size": 4, "max_steps": 2,
                  "checkpoint_every": 0, "eval_at_end": False, "torch_threads": 1, "name": "b3",
                  "batching": "b3", "b3_community": 2, "b3_skip": 0, "b3_neighbours": 3}}))
    (stage,) = load_stages([recipe])
    (result,) = run_stages([stage], local=True)
    mixture, _ = load_mixture(stage.data)
    communities = load_communities(result.run_dir / "b3.json", mixture.groups)
    (group,) = communities
    assert sorted(len(c) for c in communities[group]) == [2] * 4
    sampler = BatchSampler(mixture, 4, seed=stage.train.seed, communities=communities)
    expected = [sampler.next().fingerprint() for _ in range(2)]
    logged = [int(r["batch"]) for r in read_rows(result.run_dir / "metrics.csv")]
    assert logged == expected
    plain = BatchSampler(mixture, 4, seed=stage.train.seed)
    assert logged != [plain.next().fingerprint() for _ in range(2)]  # the b3 plan, not the random one

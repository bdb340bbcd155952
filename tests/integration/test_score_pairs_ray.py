"""The Ray Data scoring path (a pool of reranker actors) writes the same teacher scores as the in-process path."""

from __future__ import annotations

import numpy as np

from omniret.data.readers import read_pairs
from omniret.data.schema import Pair, Side, write_pairs
from omniret.training.teacher_scores import score_pairs


def test_ray_scoring_matches_in_process(ray_session, make_config, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    pairs = [Pair(Side(text=f"query {i}"), [Side(images=[str(bad)]) if i == 1 else Side(text=f"doc {i}")],
                  [Side(text=f"other {i}.{k}") for k in range(2)], dataset="d", task="image_retrieval", id=f"d:{i}")
             for i in range(4)]
    write_pairs(tmp_path / "in" / "d.jsonl", pairs)
    overrides = [f"data.train=[{tmp_path / 'in'}]", "score.batch_rows=2"]
    local = score_pairs(make_config("qwen2_vl", *overrides), tmp_path / "local")
    remote = score_pairs(make_config("qwen2_vl", *overrides, "score.ray=true", "score.actors=1"), tmp_path / "ray")
    assert local.datasets == remote.datasets == {"d": (4, 3)}
    assert len(remote.errors) == 1 and remote.errors[0].startswith("d:1: ")
    a, b = read_pairs(tmp_path / "local").pairs, read_pairs(tmp_path / "ray").pairs
    assert [p.id for p in a] == [p.id for p in b] == ["d:0", "d:2", "d:3"]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x.teacher_scores, y.teacher_scores, atol=1e-5)

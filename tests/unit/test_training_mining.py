"""Hard-negative mining: B3 rank skipping, the Qwen3-VL relative threshold, and a real mining run with the
tiny model that rewrites pair files (broken rows reported, classification negatives are other labels)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from omniret.config import SyntheticConfig, load_config
from omniret.data.readers import read_pairs
from omniret.data.synthetic import generate_benchmark
from omniret.training.mining import f1_threshold, keep_query, mine, select_negatives

SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])


def test_skip_top_skips_the_top_ranks_after_removing_positives():
    # ranking without the positive (index 1): 0, 2, 3, 4, 5, 6; skip 2, keep 3
    assert select_negatives(SCORES, {1}, method="skip_top", top_k=3, skip_top=2) == [3, 4, 5]
    assert select_negatives(SCORES, {1}, method="skip_top", top_k=2, skip_top=0) == [0, 2]
    assert select_negatives(SCORES, {1}, method="skip_top", top_k=3, skip_top=5) == [6]


def test_threshold_keeps_only_candidates_below_the_positive_plus_margin():
    # positive scores 0.6; margin 0.05 -> candidates must score below 0.65
    assert select_negatives(SCORES, {3}, method="threshold", top_k=2, margin=0.05) == [4, 5]
    assert select_negatives(SCORES, {3}, method="threshold", top_k=2, margin=0.15) == [2, 4]
    # two positives: their mean (0.85) is the reference
    assert select_negatives(SCORES, {0, 1}, method="threshold", top_k=1, margin=0.0) == [2]
    with pytest.raises(ValueError, match="unknown mining method"):
        select_negatives(SCORES, {0}, method="other", top_k=1)


def test_f1_threshold_on_a_hand_score_list():
    # lambda 0.5: TP 3, FP 2 (0.85, 0.6), FN 0 -> F1 6/8; every other cut scores lower (0.8: 4/6, 0.9: 2/4)
    pos, neg = [0.9, 0.8, 0.5], [0.85, 0.6, 0.4, 0.3]
    assert f1_threshold(pos, neg) == pytest.approx((0.5, 0.75))
    # the hard negatives are the best candidates below lambda*; 0.85 and 0.6 are treated as false negatives
    scores = np.array([0.9, 0.85, 0.6, 0.4, 0.3])
    assert select_negatives(scores, {0}, method="f1", top_k=2, limit=0.5) == [3, 4]
    # a tie (0.9 and 0.3 both give 2/3): the higher threshold
    assert f1_threshold([0.9, 0.3], [0.5, 0.4]) == pytest.approx((0.9, 2 / 3))
    assert f1_threshold([0.7], []) == pytest.approx((0.7, 1.0))
    with pytest.raises(ValueError, match="positive"):
        f1_threshold([], [0.1])
    with pytest.raises(ValueError, match="limit"):
        select_negatives(scores, {0}, method="f1", top_k=1)


def test_f1_threshold_matches_a_brute_force_search():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(0.6, 0.15, 40), rng.normal(0.3, 0.2, 300)
    grid = np.unique(np.concatenate([pos, neg]))
    f1 = [2 * (pos >= t).sum() / (2 * (pos >= t).sum() + (neg >= t).sum() + (pos < t).sum()) for t in grid]
    best = max(f1)
    assert f1_threshold(pos, neg) == pytest.approx((max(t for t, v in zip(grid, f1, strict=True) if v == best), best))


def test_a_query_is_kept_only_if_some_positive_scores_above_t_plus():
    # positives 0.9 and 0.1: the mean (0.5) fails t+ = 0.6, but one positive passes: kept
    assert keep_query(np.array([0.9, 0.1]), 0.6)
    assert not keep_query(np.array([0.55, 0.1]), 0.6)
    assert not keep_query(np.array([0.6]), 0.6)  # strictly above
    assert not keep_query(np.array([]), 0.0)  # no readable positive
    assert keep_query(np.array([]), None) and keep_query(np.array([-1.0]), None)  # no t+: every query


@pytest.mark.parametrize("policy, kept", [("drop", 0), ("keep", 12)])
def test_queries_without_a_confident_positive_are_dropped(policy, kept, pairs_dir, tiny_dirs, tmp_path):
    """t+ above any cosine: no query passes; dropped (default) or kept unchanged."""
    cfg = load_config(None, [f"model.path={tiny_dirs['qwen2_vl']}", f"data.train=[{pairs_dir / 'syn_t2i.jsonl'}]",
                             "mine.method=threshold", "mine.min_positive=1.01", f"mine.unconfident={policy}"])
    result = mine(cfg, tmp_path / "mined")
    assert result.datasets["syn_t2i"].unconfident == 12 and result.datasets["syn_t2i"].mined == 0
    written = read_pairs(tmp_path / "mined").pairs
    assert len(written) == kept
    original = {p.id: p for p in read_pairs(pairs_dir / "syn_t2i.jsonl").pairs}
    assert all(p.negatives == original[p.id].negatives and "mined" not in p.meta for p in written)


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mine")
    generate_benchmark(root, SyntheticConfig(train_per_task=12, eval_queries=2,
                                             tasks=["syn_cls_color", "syn_t2i"]))
    with (root / "train" / "syn_t2i.jsonl").open("a") as f:
        f.write('{"query": {"text": "no positives here"}}\n')  # a broken row
    return root / "train"


def test_f1_mining_keeps_negatives_below_the_dataset_threshold(pairs_dir, tiny_dirs, tmp_path):
    cfg = load_config(None, [f"model.path={tiny_dirs['qwen2_vl']}", f"data.train=[{pairs_dir / 'syn_t2i.jsonl'}]",
                             "mine.method=f1", "mine.top_k=2"])
    report = mine(cfg, tmp_path / "mined").datasets["syn_t2i"]
    assert report.threshold is not None and 0 < report.threshold_f1 <= 1
    assert report.mined == 12  # the untrained tiny model: lambda* lies among the negatives, some stay below
    for pair in read_pairs(tmp_path / "mined").pairs:
        assert pair.meta["mined"]["threshold"] == pytest.approx(report.threshold, abs=1e-4)
        assert all(s < report.threshold for s in pair.meta["mined"]["scores"])


@pytest.mark.parametrize("method", ["skip_top", "threshold"])
def test_mining_rewrites_pair_files_with_hard_negatives(method, pairs_dir, tiny_dirs, tmp_path):
    cfg = load_config(None, [f"model.path={tiny_dirs['qwen2_vl']}", f"data.train=[{pairs_dir}]",
                             f"mine.method={method}", "mine.top_k=2", "mine.skip_top=1", "mine.margin=0.5"])
    result = mine(cfg, tmp_path / "mined")
    assert result.skipped_rows == 1
    assert set(result.datasets) == {"syn_cls_color", "syn_t2i"}
    assert json.loads(json.dumps(result.datasets["syn_t2i"].__dict__))["pairs"] == 12
    mined = read_pairs(tmp_path / "mined")
    assert mined.skipped == 0 and len(mined.pairs) == 24
    originals = {p.id: p for p in read_pairs(pairs_dir).pairs}
    for pair in mined.pairs:
        own = {s.key() for s in pair.positives}
        assert len(pair.negatives) == 2
        assert not own & {s.key() for s in pair.negatives}  # never the pair's own positive
        scores = pair.meta["mined"]["scores"]
        assert scores == sorted(scores, reverse=True)
        assert pair.query.key() == originals[pair.id].query.key()
        if pair.dataset == "syn_cls_color":  # classification: the negatives are other colour labels
            assert all(s.text and s.text != pair.positives[0].text for s in pair.negatives)
    assert (tmp_path / "mined" / "mining.yaml").is_file()


def test_keep_existing_appends_mined_negatives(pairs_dir, tiny_dirs, tmp_path):
    cfg = load_config(None, [f"model.path={tiny_dirs['qwen2_vl']}", f"data.train=[{pairs_dir / 'syn_t2i.jsonl'}]",
                             "mine.top_k=1", "mine.skip_top=0", "mine.keep_existing=true"])
    mine(cfg, tmp_path / "mined")
    original = {p.id: p for p in read_pairs(pairs_dir / "syn_t2i.jsonl").pairs}
    for pair in read_pairs(tmp_path / "mined").pairs:
        before = [s.key() for s in original[pair.id].negatives]
        assert [s.key() for s in pair.negatives[:len(before)]] == before
        keys = [s.key() for s in pair.negatives]
        assert len(keys) in (len(before), len(before) + 1) and len(set(keys)) == len(keys)
    assert any(len(p.negatives) > len(original[p.id].negatives) for p in read_pairs(tmp_path / "mined").pairs)

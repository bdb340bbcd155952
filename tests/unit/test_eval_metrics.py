"""Ranking metrics on hand-made rankings: ranks, ties (expected and pessimistic), graded relevance."""

from __future__ import annotations

from math import log2

import pytest

from omniret.eval.metrics import mean_metrics, query_metrics, zero_metrics


def test_single_positive_without_ties():
    m = query_metrics([0.9, 0.5, 0.7], [0, 1, 0])  # the positive ranks third
    assert m["hit@1"] == 0 and m["hit@5"] == 1 and m["recall@1"] == 0
    assert m["mrr"] == pytest.approx(1 / 3)
    assert m["ndcg_linear@5"] == pytest.approx(1 / log2(4))
    assert m["ndcg_linear@1"] == 0


def test_all_tied_is_chance_not_a_win_for_index_zero():
    # MMEB writes the positive first; argmax over equal scores would call this a hit.
    m = query_metrics([1.0, 1.0, 1.0, 1.0], [1, 0, 0, 0])
    assert m["hit@1"] == pytest.approx(0.25)
    assert m["recall@5"] == 1
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert m["ndcg_linear@5"] == pytest.approx(sum(1 / log2(r + 1) for r in range(1, 5)) / 4)
    pessimistic = query_metrics([1.0, 1.0, 1.0, 1.0], [1, 0, 0, 0], ties="pessimistic")
    assert pessimistic["hit@1"] == 0 and pessimistic["mrr"] == pytest.approx(1 / 4)


def test_partial_tie_around_the_positive():
    scores, rel = [0.9, 0.5, 0.5, 0.1], [0, 1, 0, 0]  # the positive shares ranks 2-3 with one negative
    m = query_metrics(scores, rel, ks=[1, 2, 3])
    assert m["hit@1"] == 0 and m["hit@2"] == pytest.approx(0.5) and m["hit@3"] == 1
    assert m["mrr"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert m["ndcg_linear@2"] == pytest.approx((1 / log2(3)) / 2)
    p = query_metrics(scores, rel, ks=[2], ties="pessimistic")
    assert p["hit@2"] == 0 and p["mrr"] == pytest.approx(1 / 3)


def test_graded_qrels_ndcg_linear_and_exponential():
    m = query_metrics([0.9, 0.8, 0.7, 0.6], [0, 2, 1, 0], ks=[5])
    ideal_linear = 2 + 1 / log2(3)
    assert m["ndcg_linear@5"] == pytest.approx((2 / log2(3) + 1 / log2(4)) / ideal_linear)
    ideal_exp = 3 + 1 / log2(3)
    assert m["ndcg_exponential@5"] == pytest.approx((3 / log2(3) + 1 / log2(4)) / ideal_exp)
    assert m["recall@5"] == 1 and m["hit@5"] == 1 and m["mrr"] == pytest.approx(1 / 2)


def test_graded_relevance_inside_a_tie():
    # ranks 1-2 tied (grades 2 and 0), the grade-1 document alone at rank 3
    m = query_metrics([1.0, 1.0, 0.0], [2, 0, 1], ks=[1, 5])
    dcg = 2 * (1 + 1 / log2(3)) / 2 + 1 / log2(4)
    assert m["ndcg_linear@5"] == pytest.approx(dcg / (2 + 1 / log2(3)))
    assert m["recall@1"] == pytest.approx(0.5 / 2)  # P(grade-2 doc first) = 1/2, of 2 relevant
    # pessimistic: inside a tie, irrelevant first and lower grades before higher ones
    p = query_metrics([1.0, 1.0], [2, 1], ks=[1], ties="pessimistic")
    assert p["ndcg_linear@1"] == pytest.approx(1 / 2)


def test_hit_at_k_with_several_relevant_in_a_tie():
    # 3 tied candidates, 2 relevant: P(a relevant one first) = 2/3; any 2 of 3 contain one
    m = query_metrics([5.0, 5.0, 5.0], [1, 1, 0], ks=[1, 2])
    assert m["hit@1"] == pytest.approx(2 / 3) and m["hit@2"] == 1
    assert m["recall@2"] == pytest.approx(2 / 3)
    assert m["mrr"] == pytest.approx(2 / 3 * 1 + 1 / 3 * 1 / 2)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="relevant"):
        query_metrics([1.0, 2.0], [0, 0])
    with pytest.raises(ValueError, match="NaN"):
        query_metrics([float("nan"), 1.0], [1, 0])
    with pytest.raises(ValueError, match="equal-length"):
        query_metrics([1.0], [1, 0])
    with pytest.raises(ValueError, match="ties"):
        query_metrics([1.0], [1], ties="random")


def test_means_and_zero_rows():
    rows = [query_metrics([1.0, 0.0], [1, 0]), zero_metrics()]
    assert set(rows[0]) == set(rows[1])
    assert mean_metrics(rows)["hit@1"] == pytest.approx(0.5)

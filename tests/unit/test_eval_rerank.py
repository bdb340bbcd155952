"""Reranking evaluation: the reranker reorders the embedder's top k as its scores say; before/after metrics
and their MMEB aggregation; the wiring through `omniret eval`."""

from __future__ import annotations

import numpy as np
import pytest

from omniret.data.catalog import DatasetInfo
from omniret.data.schema import Side
from omniret.eval.dataset import EvalDataset
from omniret.eval.rerank import rerank_report, rerank_scores


class WordOverlapReranker:
    """Known scores: the share of the query's words found in the document (a stand-in whose order we know)."""

    model_id = "overlap"

    def score(self, query, documents, instruction=None):
        words = set(query.text.split())
        return np.array([len(words & set(d.text.split())) / len(words) for d in documents], dtype=np.float32)


def _dataset(name: str, category: str = "Image") -> EvalDataset:
    ds = EvalDataset(DatasetInfo(name, "Retrieval", category, "image_retrieval", "hit@1"))
    # positive first, as MMEB writes it
    ds.add_local("q0", Side(text="red circle"), [Side(text="a red circle"), Side(text="a red square"),
                                                  Side(text="a blue square"), Side(text="green")])
    ds.add_local("q1", Side(text="blue star"), [Side(text="a blue star"), Side(text="a blue moon"),
                                                Side(text="a red sun"), Side(text="grey")])
    return ds


# Embedder scores per query, aligned with each query's list: q0's positive ranks 2nd, q1's positive 3rd.
EMBEDDER = {0: np.array([0.8, 0.9, 0.1, 0.0]), 1: np.array([0.5, 0.9, 0.7, 0.0])}


def _scorer(q, cands):
    return EMBEDDER[q]


def test_top_k_is_reordered_by_the_reranker_and_the_rest_keeps_the_embedder_order():
    ds = _dataset("d")
    scores, bad = rerank_scores(ds, _scorer, WordOverlapReranker(), k=2, failed_queries=set())
    assert bad == 0
    # q0: top-2 are [square 0.9, circle 0.8] -> overlap circle 1.0 > square 0.5: circle first, then square
    assert np.argsort(-scores[0]).tolist() == [0, 1, 2, 3]
    # q1: top-2 are [moon 0.9, sun 0.7]; the positive (rank 3) is outside the top 2 and stays there
    assert np.argsort(-scores[1]).tolist() == [1, 2, 0, 3]
    report = rerank_report([ds], {"d": _scorer}, {"d": set()}, WordOverlapReranker(), k=2)
    row = report["datasets"][0]
    assert row["before"]["hit@1"] == 0 and row["after"]["hit@1"] == 50.0
    # nDCG@5 of q0 after: 1; q1 (positive at rank 3 either way): 1/log2(4) = 0.5; before q0 at rank 2
    assert row["after"]["ndcg@5"] == pytest.approx(100 * (1 + 0.5) / 2)
    assert row["before"]["ndcg@5"] == pytest.approx(100 * (1 / np.log2(3) + 0.5) / 2)
    wide = rerank_report([ds], {"d": _scorer}, {"d": set()}, WordOverlapReranker(), k=3)
    assert wide["datasets"][0]["after"]["hit@1"] == 100.0


def test_summary_aggregates_like_the_embedder_report():
    a, b = _dataset("a"), _dataset("b", "Video")
    report = rerank_report([a, b], {"a": _scorer, "b": _scorer}, {"a": set(), "b": {0}}, WordOverlapReranker(), k=3)
    after = {r["name"]: r["after"]["hit@1"] for r in report["datasets"]}
    assert after == {"a": 100.0, "b": 50.0}  # b's query 0 failed: 0 before and after
    summary = report["summary"]["hit@1"]["after"]
    assert summary["Image"] == 100.0 and summary["Video"] == 50.0 and summary["Overall"] == 75.0


def test_omniret_eval_reports_reranking_before_and_after(tmp_path, tiny_dirs, capsys):
    import json

    from omniret.cli import main

    bench = tmp_path / "bench"
    assert main(["generate", "--out", str(bench), "data.synthetic.train_per_task=2", "data.synthetic.eval_queries=3",
                 "data.synthetic.tasks=[syn_cls_shape,syn_t2i]"]) == 0
    capsys.readouterr()
    code = main(["eval", "--root", str(bench / "eval"), "--out", str(tmp_path / "report"),
                 f"model.path={tiny_dirs['qwen2_vl']}", f"rerank.model.path={tiny_dirs['qwen3_vl']}",
                 "eval.rerank_top_k=3"])
    out = capsys.readouterr().out
    assert code == 0 and "| dataset | meta-task | hit@1 before | hit@1 after |" in out
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["rerank"]["model"]["id"] == "qwen3_vl" and report["rerank"]["top_k"] == 3
    for row, main_row in zip(report["rerank"]["datasets"], report["datasets"], strict=True):
        assert row["before"]["hit@1"] == pytest.approx(100 * main_row["metrics"]["hit@1"])
    assert set(report["rerank"]["summary"]["hit@1"]["after"]) >= {"Image", "Overall"}

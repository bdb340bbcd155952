"""bench/results_tables.py: the generated block replaces only what is between its markers; rows and cells."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from omniret.config import load_config

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("results_tables", ROOT / "bench" / "results_tables.py")
results_tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(results_tables)


def summary(overall: float, **metas: float) -> dict:
    return {"meta_tasks": metas, "Image": 10.0, "Video": 20.0, "VisDoc": 30.0, "Overall": overall,
            "counts": {"Overall": len(metas)}}


def test_block_between_markers_only(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("Prose before.\n<!-- results:q begin (cmd) -->\nold table\n<!-- results:q end -->\nReading: kept.\n"
                   "Line: <!-- results:q-line begin -->old<!-- results:q-line end -->.\n")
    assert results_tables.replace_block(doc, "q", "| new |")
    assert results_tables.replace_block(doc, "q-line", "Overall 1.0")
    assert not results_tables.replace_block(doc, "other", "x")
    assert doc.read_text() == ("Prose before.\n<!-- results:q begin (cmd) -->\n| new |\n<!-- results:q end -->\n"
                               "Reading: kept.\nLine: <!-- results:q-line begin -->Overall 1.0<!-- results:q-line end -->.\n")


def test_table_rows_and_cells():
    stage = load_config(None, ["train.name=s1", "train.max_steps=5", "train.instructions=false"])
    report = {"summary": summary(50.0, **{"I-CLS": 40.0}),
              "baseline_summary": {"chance": summary(17.2, **{"I-CLS": 25.0}),
                                   "text_overlap": summary(34.3, **{"I-CLS": 25.0})}}
    text = results_tables.table([stage], {"summary": summary(11.7)}, [report])
    lines = text.splitlines()
    assert lines[2].startswith("| chance | 25.0 | n/a |") and lines[3].startswith("| text overlap (1 datasets")
    assert lines[4].startswith("| untrained | n/a |") and lines[4].endswith("| 11.7 |")
    assert lines[5] == "| s1 (5 steps, no instructions) | 40.0 | n/a | n/a | n/a | n/a | n/a | n/a | 10.0 | 20.0 | 30.0 | **50.0** |"
    assert results_tables.sentence([stage], {"summary": summary(11.7)}, [report], [None]) == (
        "Overall 11.7 (untrained) -> 50.0 on the generated benchmark (text overlap 34.3, chance 17.2)")


def rerank_section(before: float, after: float, k: int = 5) -> dict:
    return {"top_k": k, "summary": {"hit@1": {"before": {"Overall": before}, "after": {"Overall": after}},
                                    "ndcg@5": {"before": {"Overall": before + 1}, "after": {"Overall": after + 1}}}}


def test_reranker_stages_rows_per_stage_and_the_line(tmp_path):
    stages = [load_config(None, ["train.name=s1", "train.max_steps=5"]),
              load_config(None, ["train.name=rr", "train.objective=rerank", "train.max_steps=3"]),
              load_config(None, ["train.name=kd", "train.max_steps=4", "train.negatives=2", "loss.name=distill",
                                 "loss.options={base: infonce, distill_weight: 0.5}"]),
              load_config(None, ["train.name=mg", "train.objective=merge", "merge.method=ties"])]
    baselines = {"chance": summary(17.2), "text_overlap": summary(34.3)}
    reports = [{"summary": summary(v), "baseline_summary": baselines, "step": 5} for v in (40.0, 40.0, 45.0, 47.0)]
    reports[1]["rerank"] = rerank_section(50.0, 20.0)  # the reranker stage reranked s1's model
    reports[2]["rerank"], reports[3]["rerank"] = rerank_section(52.0, 30.0), rerank_section(53.0, 60.0)
    sections = results_tables.rerank_sections(stages, reports)
    assert sections == [reports[1]["rerank"], reports[1]["rerank"], reports[2]["rerank"], reports[3]["rerank"]]
    # the reranker stage is no embedder row of the main table
    rows = results_tables.table(stages, {"summary": summary(11.7)}, reports).splitlines()[5:]
    assert [r.split(" (")[0] for r in rows] == ["| s1", "| kd", "| mg"]
    assert "4 steps, instructions, 2 hard negatives, infonce + 0.5 x distill from the reranker" in rows[1]
    assert rows[2].startswith("| mg (ties merge of the two embedder stages before)")
    tables = results_tables.stages_tables(stages, reports, sections)
    assert "| embedder + reranker (top 5), hit@1 | n/a | n/a | n/a | 20.0 |" in tables
    assert tables.count("| embedder alone, hit@1 |") == 4 and "mg (merged embedder, merged, no steps" in tables
    assert results_tables.sentence(stages, {"summary": summary(11.7)}, reports, sections) == (
        "Overall 11.7 (untrained) -> 40.0 -> 45.0 -> 47.0 on the generated benchmark (text overlap 34.3, "
        "chance 17.2); hit@1 of the last stage 53.0 alone, 60.0 with the trained reranker over its top 5")


def test_random_order_of_the_top_k_gives_hit_at_k_over_k():
    from omniret.training.recipe import random_order_hit1, stage_table

    def ds(category, hit5, candidates):
        return {"category": category, "metrics": {"hit@5": hit5}, "candidates": {"per_query_mean": candidates}}

    report = {"datasets": [ds("Image", 1.0, 3), ds("Image", 0.5, 8), ds("Video", 0.8, 48)]}
    expected = {"Image": (100 / 3 + 10) / 2, "Video": 16.0, "Overall": (100 / 3 + 10 + 16) / 3}
    assert random_order_hit1(report, 5) == {k: pytest.approx(v) for k, v in expected.items()}
    assert random_order_hit1({"datasets": [ds("Image", 1.0, 3)]}, 3) == {}  # hit@3 is not reported
    report.update(summary=summary(40.0), rerank=rerank_section(50.0, 20.0))
    stage = load_config(None, ["train.name=rr", "train.objective=rerank"])
    assert "| embedder, its top 5 in random order, hit@1 (expected) | 21.7 | 16.0 | n/a | 19.8 |" in stage_table(stage, report)

"""bench/results_tables.py: the generated block replaces only what is between its markers; rows and cells."""

from __future__ import annotations

import importlib.util
from pathlib import Path

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
    assert results_tables.sentence({"summary": summary(11.7)}, [report]) == (
        "Overall 11.7 (untrained) -> 50.0 on the generated benchmark (text overlap 34.3, chance 17.2)")

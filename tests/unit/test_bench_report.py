"""bench/report.py: a rerun replaces only the generated block; hand text and other sections stay."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)


def test_rerun_keeps_hand_text(tmp_path):
    doc = tmp_path / "B.md"
    report.write_section("Serving (tiny)", "python x.py", "| a |\n| 1 |", path=doc)
    report.write_section("Other", "python y.py", "other table", path=doc)
    text = doc.read_text()
    assert text.startswith("# Benchmarks")
    # hand-written reading after the generated block of the first section
    doc.write_text(text.replace("<!-- bench:serving-tiny end -->\n",
                                "<!-- bench:serving-tiny end -->\n\nReading: kept by hand.\n"))
    report.write_section("Serving (tiny)", "python x.py --more", "| b |\n| 2 |", path=doc, before=report.snapshot())
    text = doc.read_text()
    assert "Reading: kept by hand." in text and "other table" in text
    assert "| a |" not in text and "| b |" in text and "python x.py --more" in text
    assert text.count("## Serving (tiny)") == 1 and text.count("<!-- bench:serving-tiny begin -->") == 1
    block = re.search(r"<!-- bench:serving-tiny begin -->\n(.*?)<!-- bench:serving-tiny end -->", text, re.S)[1]
    assert "at the start" in block and "at the end" in block and "at commit" in block and "torch " in block
    assert text.index("Reading: kept by hand.") > text.index("<!-- bench:serving-tiny end -->")
    assert text.index("Reading: kept by hand.") < text.index("## Other")


def test_unmarked_section_is_replaced_once(tmp_path):
    doc = tmp_path / "B.md"
    doc.write_text("# Benchmarks\n\n## Old\n\nold table\n\n## Next\n\nnext text\n")
    report.write_section("Old", "python o.py", "new table", path=doc)
    text = doc.read_text()
    assert "old table" not in text and "new table" in text and "## Next\n\nnext text\n" in text
    assert text.index("<!-- bench:old begin -->") < text.index("new table") < text.index("<!-- bench:old end -->")
    assert report.slug("GradCache vs full batch (tiny model)") == "gradcache-vs-full-batch-tiny-model"

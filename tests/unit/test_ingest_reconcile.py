"""Stale-row planning (replaced files, prune, moved content) and the run summary's counts and exit codes."""

from __future__ import annotations

import pyarrow as pa

from omniret.ingest import rows
from omniret.ingest.discover import Scope
from omniret.ingest.reconcile import plan_reconcile
from omniret.ingest.summary import LIMIT_HIT, NOTHING_INGESTED, OK, IngestSummary

OLD, NEW, OTHER = "a" * 64, "b" * 64, "c" * 64


def stored(*entries: tuple[str, str, str]) -> pa.Table:
    return pa.table({"id": [e[0] for e in entries], "source_uri": [e[1] for e in entries],
                     "sha256": [e[2] for e in entries]})


def test_a_changed_file_loses_its_old_rows_once_the_new_ones_are_all_stored():
    table = stored(("old0", "/d/x.pdf", OLD), ("old1", "/d/x.pdf", OLD), ("new0", "/d/x.pdf", NEW),
                   ("y", "/d/y.png", OTHER))
    current = {"/d/x.pdf": NEW, "/d/y.png": OTHER}
    assert plan_reconcile(table, current, complete={"/d/x.pdf", "/d/y.png"}).delete_ids == ["old0", "old1"]
    # Not all of the new content is stored yet (a crash, a failed page): keep the old rows for now.
    assert plan_reconcile(table, current, complete={"/d/y.png"}).delete_ids == []
    # Unreadable this time: nothing is known about it, nothing is removed.
    assert plan_reconcile(table, {"/d/x.pdf": None}, complete=set()).delete_ids == []


def test_prune_removes_vanished_files_inside_the_sources_only():
    table = stored(("g", "/d/gone.png", OLD), ("k", "/d/kept.png", NEW), ("e", "/elsewhere/z.png", OTHER))
    current = {"/d/kept.png": NEW}
    assert plan_reconcile(table, current, {"/d/kept.png"}).delete_ids == []  # no prune
    plan = plan_reconcile(table, current, {"/d/kept.png"}, scopes=[Scope("/d/")])
    assert plan.delete_ids == ["g"] and plan.vanished_uris == {"/d/gone.png"}


def test_content_still_present_under_another_path_is_repointed_not_deleted():
    table = stored(("p0", "/d/old-name.pdf", OLD), ("p1", "/d/old-name.pdf", OLD))
    current = {"/d/new-name.pdf": OLD}
    plan = plan_reconcile(table, current, {"/d/new-name.pdf"}, scopes=[Scope("/d/")])
    assert plan.delete_ids == [] and plan.repoint == {OLD: "/d/new-name.pdf"}


def result(**row) -> dict:
    return {"status": None, "stage": None, "reason": None, "n": None, "id": None, "source_uri": None,
            "sha256": None, "unit": None, "modality": None, **row}


def test_summary_counts_files_items_and_errors():
    s = IngestSummary(files_seen=3)
    s.add(rows.table([
        result(status=rows.PLANNED, n=2, source_uri="/a.pdf", sha256=OLD),
        result(status=rows.SKIPPED, n=1, source_uri="/a.pdf", sha256=OLD),
        result(status=rows.WRITTEN, n=1, source_uri="/a.pdf", sha256=OLD, unit="page=1"),
        result(status=rows.PLANNED, n=2, source_uri="/b.pdf", sha256=NEW),
        result(status=rows.WRITTEN, n=1, source_uri="/b.pdf", sha256=NEW, unit="page=0"),
        result(status=rows.FAILED, stage="decode", reason="cannot render page 1", source_uri="/b.pdf",
               sha256=NEW, unit="page=1"),
        result(status=rows.FAILED, stage="classify", reason="unknown file type", source_uri="/c.bin"),
    ], rows.RESULT_SCHEMA))
    assert (s.items_planned, s.items_written, s.items_skipped, s.items_failed) == (4, 2, 1, 2)
    assert s.complete_files == {"/a.pdf"} and s.failed_files == {"/b.pdf", "/c.bin"}
    assert s.file_sha == {"/a.pdf": OLD, "/b.pdf": NEW, "/c.bin": None}
    assert s.exit_code() == OK
    text = s.format()
    assert "2 written, 1 already present (skipped), 2 failed" in text
    assert "/b.pdf [page=1] (decode): cannot render page 1" in text
    assert s.to_dict()["files_failed"] == 2


def test_exit_codes():
    assert IngestSummary(files_seen=0).exit_code() == NOTHING_INGESTED
    failed = IngestSummary(files_seen=1)
    failed.add_error("/x.jpg", "decode", "corrupt")
    assert failed.exit_code() == NOTHING_INGESTED
    assert IngestSummary(files_seen=5, items_skipped=5).exit_code() == OK  # all present already
    assert IngestSummary(files_seen=5, items_written=1, stopped="too many failures").exit_code() == LIMIT_HIT

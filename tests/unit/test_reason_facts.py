"""Fact recall of ECR against a teacher's: facts read from hand strings, the recall figure, and the file comparison."""

from __future__ import annotations

import pytest

from omniret.reasoning.facts import compare, fact_recall, facts
from omniret.reasoning.store import EcrWriter

TEACHER = ("<think>The picture shows two red circles (top-left, centre); one blue square (bottom).</think> "
           "The picture shows two red circles (top-left, centre); one blue square (bottom).")


def test_facts_of_a_scene_description():
    assert facts(TEACHER) == {
        ("object", ("two", "red", "circle")), ("object", ("one", "blue", "square")),
        ("colour", "red"), ("colour", "blue"), ("shape", "circle"), ("shape", "square"),
        ("count", "two"), ("count", "one"),
        ("position", "top-left"), ("position", "centre"), ("position", "bottom")}


def test_articles_digits_and_plurals_normalise_and_motion_is_no_position():
    assert ("object", ("one", "green", "triangle")) in facts("a green triangle")
    assert ("object", ("two", "green", "triangles")) not in facts("2 green triangles")
    assert ("object", ("two", "green", "triangle")) in facts("2 green triangles")
    clip = facts("The clip shows a blue circle moving left along the bottom.")
    assert ("motion", "left") in clip and ("position", "left") not in clip and ("position", "bottom") in clip
    assert facts("Page 3 says: 11 purple circles ship on Thursday.") == {
        ("count", "three"), ("count", "11"), ("colour", "purple"), ("shape", "circle"),
        ("object", ("11", "purple", "circle"))}


def test_recall_is_the_share_of_teacher_facts_the_student_states():
    # student gets the red circles right but miscounts the square and misplaces it: of 11 teacher facts it
    # states red, blue, circle, square, two, one, top-left, centre and the red-circle object (9)
    student = "<think>two red circles at the top-left and centre, and one blue thing</think> one square at the right"
    assert fact_recall(TEACHER, student) == pytest.approx(9 / 11)
    assert fact_recall(TEACHER, TEACHER) == 1.0
    assert fact_recall(TEACHER, "") == 0.0
    assert fact_recall("The text says: hello.", "anything") is None  # no fact to recall


def test_compare_matches_records_by_content_and_template(tmp_path):
    def record(h, template, text, summary, reasoner, role="query", closed=True):
        return {"key": f"{h}{reasoner}{template}", "content_hash": h, "template": f"{template}@0000", "text": text,
                "summary": summary, "reasoner": reasoner, "role": role, "closed": closed}

    EcrWriter(tmp_path / "t").append([
        record("a", "retrieval", TEACHER, "", "teacher"),
        record("b", "retrieval", "one yellow star", "", "teacher"),  # "star" is no shape: one colour + one count
        record("c", "qa", "The text says: hello.", "", "teacher"),  # no fact: not counted
        record("d", "qa", "one red circle", "", "teacher")])  # the student has no record of it
    EcrWriter(tmp_path / "s").append([
        record("a", "retrieval", TEACHER, "two red circles", "student"),
        record("b", "retrieval", "<think>one", "", "student", closed=False),
        record("c", "qa", "hello", "", "student"),
        record("a", "qa", "nothing", "", "student")])  # another template of the same content: unmatched
    report = compare(tmp_path / "t", tmp_path / "s")
    assert (report.items, report.missing) == (2, 1)
    assert report.recall == pytest.approx((1.0 + 1 / 2) / 2)
    # summary "two red circles": red, circle, two, the object: 4 of the 11 facts; item b's summary is empty
    assert report.summary_recall == pytest.approx((4 / 11 + 0) / 2)
    assert report.complete == 0.5 and report.closed == 0.5
    assert report.by_template["retrieval"]["items"] == 2
    assert compare(tmp_path / "t", tmp_path / "s", student_reasoner="other").items == 0
    # the baseline that ignores its input: every item gets its template's most frequent teacher text (ties:
    # the first), here TEACHER for retrieval and "The text says: hello." for qa
    base = compare(tmp_path / "t", None)
    assert (base.items, base.missing) == (3, 0)
    assert base.recall == pytest.approx((1.0 + 1 / 2 + 0.0) / 3) and base.summary_recall == pytest.approx(0.5)


def test_the_command_prints_the_recall_and_the_baseline(tmp_path, capsys):
    from omniret.cli import main

    record = {"key": "k", "content_hash": "a", "template": "retrieval@0000", "reasoner": "r", "role": "query"}
    EcrWriter(tmp_path / "t").append([{**record, "text": TEACHER}])
    EcrWriter(tmp_path / "s").append([{**record, "text": "two red circles", "summary": "", "closed": False}])
    assert main(["reason-facts", "--teacher", str(tmp_path / "t"), "--student", str(tmp_path / "s"), "--baseline"]) == 0
    out = capsys.readouterr().out.splitlines()
    # "two red circles": red, circle, two and the object, 4 of the teacher's 11 facts
    assert out[0].startswith("1 items (teacher records without a student record: 0); closed </think> 0.000; "
                             "fact recall 0.364 (ECR text), 0.000 (summary)")
    assert out[2].startswith("baseline") and "fact recall 1.000 (ECR text)" in out[3]

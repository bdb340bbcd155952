"""The reasoner and its ECR job with the tiny model: templates as data, ECR parsing, deterministic
greedy generation (twice, batch vs one by one), truncation recorded, resumable idempotent job,
unreadable items reported by name."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from omniret.data.schema import TASK_GROUPS, Pair, Side, write_pairs
from omniret.items import Item
from omniret.reasoning.ecr import parse_ecr
from omniret.reasoning.job import run_reasoning
from omniret.reasoning.reasoner import Reasoner, Request
from omniret.reasoning.store import ECR_FILE, ERRORS_FILE, EcrLookup, content_hash, read_records
from omniret.reasoning.templates import TEMPLATES, THINK_CLOSE, template_for_task


def test_every_task_group_has_a_template_that_asks_for_the_ecr_format(backbones):
    assert {template_for_task(t).name for t in TASK_GROUPS} == {"qa", "visdoc", "grounding", "retrieval", "video"}
    assert template_for_task("image_qa").name == "qa"
    assert template_for_task("document_retrieval").name == "visdoc"
    assert template_for_task("unknown").name == "retrieval"
    tok = backbones["qwen2_vl"].tokenizer
    for template in TEMPLATES.values():
        assert "<think>" in template.prompt and THINK_CLOSE in template.prompt
        head, body, tail = template.prompt_template().render("a red circle", [], template.instruction("Find it"))
        # the item's text follows the reasoner prompt and its task instruction; the assistant turn opens <think>
        assert body == f"{template.prompt}\nTask: Find it\na red circle"
        assert tail == "<|im_end|>\n<|im_start|>assistant\n<think>\n"
        assert tok.decode(tok(head + body + tail)["input_ids"]).endswith("assistant\n<think>\n")
    assert len({t.id for t in TEMPLATES.values()}) == len(TEMPLATES)


def test_parse_ecr_splits_think_and_summary_and_flags_an_unclosed_generation():
    ecr = parse_ecr("<think>\n", "two red circles left of a square.</think> Two red circles.", hit_limit=False,
                    new_tokens=9)
    assert (ecr.think, ecr.summary, ecr.closed, ecr.truncated) == (
        "two red circles left of a square.", "Two red circles.", True, False)
    assert ecr.text == "<think>\ntwo red circles left of a square.</think> Two red circles."
    cut = parse_ecr("<think>\n", "two red circ", hit_limit=True, new_tokens=4)
    assert (cut.think, cut.summary, cut.closed, cut.truncated) == ("two red circ", "", False, True)
    stopped = parse_ecr("<think>\n", "two", hit_limit=False, new_tokens=1)
    assert (stopped.closed, stopped.truncated, stopped.think) == (False, False, "two")


@pytest.fixture(scope="module")
def reasoner(make_config):
    cfg = make_config("qwen2_vl", "reason.max_new_tokens=6", "media.max_pixels=3136")
    cfg.reason.model.path = cfg.model.path
    return Reasoner.from_config(cfg.reason, cfg.media)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_greedy_generation_is_deterministic_and_batch_equals_one_by_one(family, backbones, make_config):
    cfg = make_config(family, "reason.max_new_tokens=6", "media.max_pixels=3136")
    reasoner = Reasoner(backbones[family], cfg.reason, cfg.media)
    image = Image.new("RGB", (56, 56), (200, 30, 30))
    requests = [Request(Item(text="how many circles?", images=[image]), TEMPLATES["qa"]),
                Request(Item(text="a red circle above a much longer description of a blue square"),
                        TEMPLATES["qa"]),
                Request(Item(text="a square"), TEMPLATES["retrieval"])]
    first = [e.text for e in reasoner.generate(requests)]
    second = [e.text for e in reasoner.generate(requests)]
    single = [reasoner.generate([r])[0].text for r in requests]
    assert first == second == single
    assert all(t.startswith("<think>") and len(t) > len("<think>") for t in first)
    # the tiny random model never writes </think>: cut at the limit and recorded, not dropped
    outcome = reasoner.generate(requests[:1])[0]
    assert outcome.truncated and not outcome.closed and outcome.new_tokens == 6


def test_an_unreadable_item_is_its_own_outcome(reasoner, tmp_path):
    outcomes = reasoner.generate([Request(Item(images=[str(tmp_path / "gone.png")], name="gone"), TEMPLATES["qa"]),
                                  Request(Item(text="a square"), TEMPLATES["qa"])])
    assert "gone" in str(outcomes[0]) and "not found" in str(outcomes[0])
    assert outcomes[1].text.startswith("<think>")


@pytest.fixture()
def pairs_file(tmp_path):
    image = tmp_path / "red.png"
    Image.new("RGB", (56, 56), (200, 30, 30)).save(image)
    pairs = [Pair(Side(text=f"query {i}", instruction="Find the picture."), [Side(images=[str(image)])],
                  dataset="toy", task="image_retrieval", id=f"p{i}") for i in range(5)]
    pairs.append(Pair(Side(images=[str(tmp_path / "missing.png")]), [Side(text="x")], dataset="toy",
                      task="image_qa", id="broken"))
    path = tmp_path / "pairs" / "toy.jsonl"
    write_pairs(path, pairs)
    return path


def _job(make_config, pairs_file, out, *extra):
    cfg = make_config("qwen2_vl", f"reason.pairs=[{pairs_file}]", f"reason.out={out}", "reason.ray=false",
                      "reason.max_new_tokens=4", "reason.batch_rows=2", "media.max_pixels=3136", *extra)
    cfg.reason.model.path = cfg.model.path
    return cfg


def test_job_resumes_after_a_kill_and_equals_a_clean_run(make_config, pairs_file, tmp_path):
    clean = run_reasoning(_job(make_config, pairs_file, tmp_path / "clean", "reason.sides=both"))
    # 5 queries + 1 shared positive image + the broken pair's text positive; the broken query is an error
    assert (clean.items, clean.written, clean.already_done) == (7, 7, 0)
    assert [e["name"] for e in clean.errors] == ["toy broken query"]
    errors = [json.loads(line) for line in (tmp_path / "clean" / ERRORS_FILE).read_text().splitlines()]
    assert errors[0]["name"] == "toy broken query" and "missing.png" in errors[0]["reason"]
    records = read_records(tmp_path / "clean" / ECR_FILE)
    assert all(r["truncated"] and r["source"] == "reasoner" for r in records)
    # a run killed while writing: the first three records and half of the fourth line are on disk
    lines = (tmp_path / "clean" / ECR_FILE).read_text().splitlines(keepends=True)
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / ECR_FILE).write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    resumed = run_reasoning(_job(make_config, pairs_file, killed, "reason.sides=both"))
    assert (resumed.already_done, resumed.written) == (3, 4)
    by_key = {r["key"]: r for r in read_records(killed / ECR_FILE)}
    assert by_key == {r["key"]: r for r in records}
    again = run_reasoning(_job(make_config, pairs_file, killed, "reason.sides=both"))
    assert (again.already_done, again.written) == (7, 0)
    assert len(read_records(killed / ECR_FILE)) == 7


def test_lookup_finds_the_ecr_of_a_side_by_content(make_config, pairs_file, tmp_path):
    run_reasoning(_job(make_config, pairs_file, tmp_path / "out"))
    lookup = EcrLookup([tmp_path / "out"])
    side = Side(text="query 2", instruction="Find the picture.")
    record = next(r for r in read_records(tmp_path / "out" / ECR_FILE) if r["name"] == "toy p2 query")
    assert record["content_hash"] == content_hash(side)
    assert lookup.get(side, "retrieval") == record["text"]
    assert lookup.get(side, "qa") is None  # the same content under a QA task has its own ECR
    assert lookup.get(Side(text="query 2"), "retrieval") is None  # another instruction is other content


def test_sampled_generation_is_seeded(reasoner):
    requests = [Request(Item(text="a red circle"), TEMPLATES["retrieval"], "k1"),
                Request(Item(text="two squares"), TEMPLATES["retrieval"], "k2")]

    def sample(seed):
        cfg = reasoner.cfg.model_copy(update={"do_sample": True, "temperature": 1.5, "seed": seed,
                                              "max_new_tokens": 12})
        return [e.text for e in Reasoner(reasoner.backbone, cfg, reasoner.media).generate(requests)]

    assert sample(0) == sample(0)
    assert sample(0) != sample(1)

"""TTE_t: an item's ECR is rendered after its input, inside every embedding template's body, and the
pooled token is unchanged; sides get their ECR from the job's files for the configured side only."""

from __future__ import annotations

import pytest
from PIL import Image

from omniret.config import MediaConfig
from omniret.data.schema import Pair, Side
from omniret.errors import ConfigError
from omniret.items import Item
from omniret.models.prompts import TEMPLATES, get_template
from omniret.models.reasoned import ReasoningEncoder
from omniret.reasoning.attach import attach_to_pairs
from omniret.reasoning.store import EcrWriter, content_hash, record_key

ECR = "<think>two red circles, left of a square</think> Two red circles."


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_ecr_follows_the_input_and_the_pooled_token_is_unchanged(name, backbones):
    backbone = backbones["qwen2_vl"]
    template = get_template(name)
    encoder = ReasoningEncoder(backbone.tokenizer, backbone.family, backbone.spec, MediaConfig(), template, 512)
    image = Image.new("RGB", (56, 56), "red")
    plain = encoder.encode(Item(text="how many circles?", images=[image], instruction="Answer"))
    with_ecr = encoder.encode(Item(text="how many circles?", images=[image], instruction="Answer", reasoning=ECR))
    text = backbone.tokenizer.decode(with_ecr.input_ids)
    tail = template.render("how many circles?", [], "Answer")[2]
    # right after the user text, before the template's tail (end of turn, assistant header, pooled token)
    assert f"how many circles?\n{ECR}{tail}" in text
    assert text.endswith(tail)
    if template.pooled_token is None:  # vlm2vec pools the last text token, which is now the ECR's last
        assert backbone.tokenizer.decode(with_ecr.input_ids[-1:]) == backbone.tokenizer.decode(
            backbone.tokenizer(ECR)["input_ids"][-1:])
    else:
        assert with_ecr.input_ids[-1] == plain.input_ids[-1]
        assert backbone.tokenizer.decode(with_ecr.input_ids[-1:]) == template.pooled_token
    assert len(with_ecr.input_ids) > len(plain.input_ids)
    # without reasoning, the encoder is exactly the plain one
    assert backbone.tokenizer.decode(plain.input_ids).endswith(f"how many circles?{tail}")


def test_a_short_budget_cuts_the_end_of_the_ecr_not_the_tail(backbones):
    backbone = backbones["qwen2_vl"]
    template = get_template("qwen3_vl_embedding")
    full = ReasoningEncoder(backbone.tokenizer, backbone.family, backbone.spec, MediaConfig(), template, 512)
    n = len(full.encode(Item(text="a red circle")).input_ids)
    short = ReasoningEncoder(backbone.tokenizer, backbone.family, backbone.spec, MediaConfig(), template, n + 3)
    ids = short.encode(Item(text="a red circle", reasoning=ECR)).input_ids
    assert len(ids) == n + 3
    assert backbone.tokenizer.decode(ids).endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert "a red circle\n" in backbone.tokenizer.decode(ids)


def test_attach_sets_ecr_on_the_configured_side_by_content(make_config, tmp_path):
    query, target = Side(text="how many circles?", instruction="Answer"), Side(text="two")
    writer = EcrWriter(tmp_path)
    writer.append([{"key": record_key(content_hash(s), "qa@x", "r@y"), "content_hash": content_hash(s),
                    "template": "qa@x", "reasoner": "r@y", "text": f"{ECR} {s.text}", "truncated": False}
                   for s in (query, target)])
    pair = Pair(query, [target], dataset="toy", task="image_qa")
    assert attach_to_pairs(make_config("qwen2_vl", "model.reasoning=query", f"model.reasoning_from=[{tmp_path}]"),
                           [pair]) == (1, 0)
    assert pair.query.reasoning == f"{ECR} how many circles?" and pair.positives[0].reasoning is None
    assert pair.query.to_item().reasoning == pair.query.reasoning
    assert Side.from_dict(pair.query.to_dict()).reasoning == pair.query.reasoning
    other = Pair(Side(text="unseen"), [Side(text="two")], dataset="toy", task="image_qa")
    assert attach_to_pairs(make_config("qwen2_vl", "model.reasoning=both", f"model.reasoning_from=[{tmp_path}]"),
                           [other]) == (1, 1)
    assert other.query.reasoning is None and other.positives[0].reasoning == f"{ECR} two"
    with pytest.raises(ConfigError, match="reasoning_from"):
        attach_to_pairs(make_config("qwen2_vl", "model.reasoning=query"), [pair])


def test_two_reasoners_for_the_same_content_need_a_choice(make_config, tmp_path):
    side = Side(text="two")
    h = content_hash(side)
    EcrWriter(tmp_path).append([{"key": record_key(h, "qa@x", r), "content_hash": h, "template": "qa@x",
                                 "reasoner": r, "text": f"by {r}", "truncated": False} for r in ("a@1", "b@2")])
    pair = Pair(Side(text="q"), [side], dataset="toy", task="image_qa")
    with pytest.raises(ConfigError, match="reasoning_reasoner"):
        attach_to_pairs(make_config("qwen2_vl", "model.reasoning=target", f"model.reasoning_from=[{tmp_path}]"),
                        [pair])
    attach_to_pairs(make_config("qwen2_vl", "model.reasoning=target", f"model.reasoning_from=[{tmp_path}]",
                                "model.reasoning_reasoner=b@2"), [pair])
    assert pair.positives[0].reasoning == "by b@2"
    # the same content under a retrieval task looks for retrieval ECR, which is not there
    other = Pair(Side(text="q"), [Side(text="two")], dataset="toy", task="image_retrieval")
    assert attach_to_pairs(make_config("qwen2_vl", "model.reasoning=target", f"model.reasoning_from=[{tmp_path}]",
                                       "model.reasoning_reasoner=b@2"), [other]) == (0, 1)


def test_the_setting_is_the_one_authority_over_reasoning(make_config, tmp_path):
    pair = Pair(Side(text="q", reasoning="from a file"), [Side(text="t", reasoning="from a file")], dataset="toy",
                task="image_qa")
    EcrWriter(tmp_path)  # an empty store
    attach_to_pairs(make_config("qwen2_vl", "model.reasoning=target", f"model.reasoning_from=[{tmp_path}]"), [pair])
    assert pair.query.reasoning is None and pair.positives[0].reasoning is None  # not chosen / not stored
    pair.query.reasoning = "from a file"
    assert attach_to_pairs(make_config("qwen2_vl"), [pair]) == (0, 0)
    assert pair.query.reasoning is None

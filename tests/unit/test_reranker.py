"""The yes/no reranker: the collapsed head equals the 2-way softmax of the full LM head; truncation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from omniret.items import Item
from omniret.models.prompts import RERANK_TAIL
from omniret.models.reranker import TAIL_KEEP, Reranker, truncate_middle


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_score_equals_softmax_over_yes_and_no_logits(family, backbones):
    backbone = backbones[family]
    reranker = Reranker(backbone)
    query = Item(text="a red circle", images=[Image.new("RGB", (56, 56), "red")])
    docs = ["red circle", Item(text="blue", images=[Image.new("RGB", (60, 40), "blue")]), "a much longer doc " * 5]
    scores = reranker.score(query, docs)
    pairs = [reranker.encode_pair(query, d if isinstance(d, Item) else Item(text=d), None, i)
             for i, d in enumerate(docs)]
    batch = reranker.encoder.collate(pairs, padding_side="left")
    with torch.no_grad():
        hidden = backbone.hidden_states(batch)[:, -1]
        logits = backbone.lm_head(hidden)  # the full vocabulary
    two_way = torch.softmax(logits[:, [reranker.yes_id, reranker.no_id]], dim=-1)[:, 0]
    np.testing.assert_allclose(scores, two_way.numpy(), atol=1e-6)
    assert ((scores > 0) & (scores < 1)).all()


def test_prompt_follows_the_qwen3_vl_reranker_template(backbones):
    reranker = Reranker(backbones["qwen2_vl"])
    pair = reranker.encode_pair(Item(text="q"), Item(text="d"), "Judge it", 0)
    text = backbones["qwen2_vl"].tokenizer.decode(pair.input_ids)
    assert "<Instruct>: Judge it<Query>:q\n<Document>:d" in text
    assert text.startswith("<|im_start|>system\nJudge whether the Document")
    assert text.endswith(RERANK_TAIL)


def test_truncation_cuts_the_middle_and_keeps_specials_and_the_assistant_header(backbones):
    backbone = backbones["qwen2_vl"]
    reranker = Reranker(backbone)
    reranker.cfg = reranker.cfg.model_copy(update={"max_length": 80})
    pair = reranker.encode_pair(Item(text="query words " * 30), Item(text="document words " * 60), None)
    full = Reranker(backbone).encode_pair(Item(text="query words " * 30), Item(text="document words " * 60), None)
    assert len(pair.input_ids) == 80 < len(full.input_ids)
    assert pair.input_ids[-TAIL_KEEP:] == full.input_ids[-TAIL_KEEP:]
    specials = set(backbone.tokenizer.all_special_ids)
    assert [t for t in pair.input_ids if t in specials] == [t for t in full.input_ids if t in specials]


def test_truncate_middle_refuses_when_only_protected_tokens_remain():
    assert truncate_middle([1, 2, 3], 5, set()) == [1, 2, 3]
    # droppable (not protected, not in the 5-token tail): 1 2 3 4 5; three go, centred on the middle
    assert truncate_middle([9, 1, 2, 3, 4, 5, 9, 7, 7, 7, 7, 7], 9, {9}) == [9, 1, 5, 9, 7, 7, 7, 7, 7]
    out = truncate_middle(list(range(20)), 10, {0, 19})
    assert len(out) == 10 and out[0] == 0 and out[-5:] == list(range(15, 20))
    with pytest.raises(ValueError):
        truncate_middle([9] * 10, 5, {9})

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


def test_from_config_loads_the_rerank_model_not_the_embedder(make_config, tiny_dirs, backbones):
    """rerank.model is a checkpoint of its own (here another family: a Qwen3-VL causal LM with its LM head)."""
    cfg = make_config("qwen2_vl", f"rerank.model.path={tiny_dirs['qwen3_vl']}")
    reranker = Reranker.from_config(cfg)
    assert reranker.backbone.family.name == "qwen3_vl" and reranker.model_id == "qwen3_vl"
    docs = ["a red circle", "a blue square"]
    np.testing.assert_allclose(reranker.score("a red circle", docs),
                               Reranker(backbones["qwen3_vl"]).score("a red circle", docs), atol=1e-6)
    assert not np.allclose(reranker.score("a red circle", docs),
                           Reranker(backbones["qwen2_vl"]).score("a red circle", docs), atol=1e-3)


def test_one_model_tag_for_ingest_and_serving(make_config, tiny_dirs):
    from omniret.ingest.embed import model_tag as ingest_tag
    from omniret.models.backbone import model_tag
    from omniret.models.embedder import Embedder

    cfg = make_config("qwen2_vl", "embed.dimensions=16")
    assert Embedder.from_config(cfg).model_id == ingest_tag(cfg) == "qwen2_vl@16"
    cfg = make_config("qwen2_vl", "model.adapter=/runs/a/checkpoint_000010", "embed.dimensions=32")
    assert ingest_tag(cfg) == model_tag(cfg.model, 32) == "qwen2_vl+checkpoint_000010@32"


def test_a_checkpoint_whose_tokenizer_splits_yes_or_no_is_refused_at_load(make_config, tiny_dirs, tmp_path):
    import shutil

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from omniret.errors import ConfigError
    from omniret.models.tiny import SPECIAL_TOKENS

    folder = shutil.copytree(tiny_dirs["qwen2_vl"], tmp_path / "bytes-only")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    # No merges: every word is split into its bytes ("yes" -> 3 tokens).
    tok.train_from_iterator(["yes no"], trainers.BpeTrainer(vocab_size=len(alphabet) + len(SPECIAL_TOKENS),
                                                             special_tokens=SPECIAL_TOKENS, initial_alphabet=alphabet,
                                                             show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                            additional_special_tokens=SPECIAL_TOKENS[1:]).save_pretrained(folder)
    cfg = make_config("qwen2_vl", f"rerank.model.path={folder}")
    with pytest.raises(ConfigError, match=r"bytes-only: its tokenizer splits 'yes' into 3 tokens"):
        Reranker.from_config(cfg)

"""UME-R1's embedding tokens: row initialisation from the family's named tokens (and the mean fallback),
saved with the checkpoint; the user turn; the generative / discriminative read-out positions."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from omniret.models.families import FAMILIES
from omniret.models.gen_tokens import (
    DISC_EMB,
    GEN_EMB,
    MEAN_ROW,
    UME_R1_USER_TURN,
    add_embedding_tokens,
    disc_embedding,
    gen_embedding,
    ume_r1_user_text,
)
from omniret.models.pooling import normalize
from omniret.models.tiny import init_tiny_model


@pytest.fixture()
def tiny():
    return init_tiny_model("qwen2_vl", 0, "tiny")


def _rows(model, token_id):
    return model.get_input_embeddings().weight[token_id], model.get_output_embeddings().weight[token_id]


def test_qwen2_vl_rows_copy_the_named_tokens_and_survive_saving(tiny, tmp_path):
    model, tok = tiny
    report = add_embedding_tokens(model, tok, "qwen2_vl")
    assert report == {GEN_EMB: "<|object_ref_end|>", DISC_EMB: "<|object_ref_start|>"}
    gen, disc = tok.convert_tokens_to_ids(GEN_EMB), tok.convert_tokens_to_ids(DISC_EMB)
    assert model.get_input_embeddings().weight.shape[0] == len(tok) > max(gen, disc)
    for new, source in ((gen, "<|object_ref_end|>"), (disc, "<|object_ref_start|>")):
        src = tok.convert_tokens_to_ids(source)
        for new_row, src_row in zip(_rows(model, new), _rows(model, src), strict=True):
            assert torch.equal(new_row, src_row)
    # One id each, in text the model is given (special tokens are not split).
    assert tok(f"a {GEN_EMB} b {DISC_EMB}", add_special_tokens=False)["input_ids"].count(gen) == 1
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    model2 = FAMILIES["qwen2_vl"].model_class().from_pretrained(tmp_path)
    assert tok2.convert_tokens_to_ids(GEN_EMB) == gen
    assert torch.equal(model2.get_input_embeddings().weight[gen], model.get_input_embeddings().weight[gen])
    # Adding again keeps the trained rows.
    assert add_embedding_tokens(model2, tok2, "qwen2_vl") == {DISC_EMB: "present", GEN_EMB: "present"}
    assert len(tok2) == len(tok)


def test_missing_source_falls_back_to_mean_and_hand_mapping_copies(tiny):
    model, tok = tiny
    rows = model.get_input_embeddings().weight.shape[0]
    means = [w[:rows].mean(dim=0).clone() for w in _rows_all(model)]
    box = tok.convert_tokens_to_ids("<|box_start|>")
    # The tiny tokenizer has no <tool_call>: Qwen2.5's sources are missing, so <disc_emb> takes the mean row,
    # while the hand mapping gives <gen_emb> the <|box_start|> row.
    report = add_embedding_tokens(model, tok, "qwen2_5_vl", sources={GEN_EMB: "<|box_start|>"})
    assert report == {DISC_EMB: MEAN_ROW, GEN_EMB: "<|box_start|>"}
    disc, gen = tok.convert_tokens_to_ids(DISC_EMB), tok.convert_tokens_to_ids(GEN_EMB)
    for weight, mean in zip(_rows_all(model), means, strict=True):
        assert torch.allclose(weight[disc], mean)
        assert torch.equal(weight[gen], weight[box])
    with pytest.raises(ValueError, match="only"):
        add_embedding_tokens(model, tok, "qwen2_vl", sources={"<x>": "<|box_start|>"})


def _rows_all(model):
    return model.get_input_embeddings().weight, model.get_output_embeddings().weight


def test_user_turn_text():
    text = ume_r1_user_text("A red circle.")
    assert text.startswith("A red circle. \n<disc_emb>\nRepresent the above input text, images, videos")
    assert text.endswith("Finally, use the <gen_emb> tag to represent the entire input.")
    assert UME_R1_USER_TURN.count(DISC_EMB) == 1 and UME_R1_USER_TURN.count(GEN_EMB) == 1
    assert UME_R1_USER_TURN.index("{question}") == 0
    assert ume_r1_user_text("{question} twice") == UME_R1_USER_TURN.replace("{question}", "{question} twice")


def test_gen_embedding_hand_sequences():
    g = 7  # id of <gen_emb>; prompt length 3, completion length 6
    ids = torch.tensor([
        [1, 2, 3, 4, g, 5, g, 9, 0],  # last generated <gen_emb> at position 6
        [1, 2, 3, 4, 5, 6, 8, 0, 0],  # none: fallback to the last completion token (position 6)
        [1, 2, 3, 4, 5, 0, 0, g, 0],  # a <gen_emb> after EOS (masked) does not count: fallback position 4
        [1, g, 3, 0, 0, 0, 0, 0, 0],  # empty completion, <gen_emb> only in the prompt: fallback position 2
    ])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    hidden = torch.randn(4, 9, 5, generator=torch.Generator().manual_seed(0))
    emb, found = gen_embedding(ids, hidden, 3, g, mask)
    assert found.tolist() == [True, False, False, False]
    expected = normalize(torch.stack([hidden[0, 6], hidden[1, 6], hidden[2, 4], hidden[3, 2]]))
    assert torch.equal(emb, expected)
    assert torch.allclose(emb.norm(dim=1), torch.ones(4))
    with pytest.raises(ValueError, match="completion_mask"):
        gen_embedding(ids, hidden, 3, g, mask[:, :5])
    with pytest.raises(ValueError, match="prompt_length"):
        gen_embedding(ids, hidden, 0, g, None)


def test_disc_embedding_in_a_real_prompt(tiny):
    model, tok = tiny
    add_embedding_tokens(model, tok, "qwen2_vl")
    disc = tok.convert_tokens_to_ids(DISC_EMB)
    prompt = tok.apply_chat_template([{"role": "user", "content": ume_r1_user_text("a red circle")}],
                                     tokenize=False, add_generation_prompt=True)
    batch = tok([prompt, "no token here"], padding=True, padding_side="left", return_tensors="pt",
                add_special_tokens=False)
    ids, attn = batch["input_ids"], batch["attention_mask"]
    position = ids[0].tolist().index(disc)
    hidden = torch.randn(*ids.shape, 4, generator=torch.Generator().manual_seed(1))
    emb, found = disc_embedding(ids, hidden, attn, disc)
    assert found.tolist() == [True, False]
    assert torch.equal(emb[0], normalize(hidden[0, position]))
    assert torch.equal(emb[1], normalize(hidden[1, -1]))  # left padding: the last attended token is the last

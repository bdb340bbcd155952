"""UME-R1's model view: the prompt places <disc_emb> by the template only, the generative embedding is read at
the last generated <gen_emb> of a left-padded batch (hand completions against single unpadded forward
passes), generation decodes special tokens and falls back without <gen_emb>, never raising."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omniret.errors import ConfigError
from omniret.items import Item
from omniret.models.backbone import forward_hidden, load_backbone
from omniret.models.encoding import Encoded
from omniret.models.gen_tokens import DISC_EMB, GEN_EMB, add_embedding_tokens
from omniret.models.generative import GenerativeEmbedder
from omniret.models.pooling import normalize


@pytest.fixture(scope="module")
def ume(make_config):
    """A fresh tiny backbone (own weights: a test below edits them) with the tokens added."""
    backbone = load_backbone(make_config("qwen2_vl").model)
    add_embedding_tokens(backbone.model, backbone.tokenizer, backbone.family.name)
    return GenerativeEmbedder(backbone, batch_size=4)


def _single_state(ume: GenerativeEmbedder, ids: list[int], position: int) -> torch.Tensor:
    """The unit last-layer state at ``position`` of one unpadded sequence."""
    batch = ume.encoder.collate([Encoded(ids)])
    with torch.inference_mode():
        return normalize(forward_hidden(ume.model, batch)[0, position].float())


def test_prompt_has_one_disc_emb_from_the_template_and_user_text_cannot_add_one(ume):
    tok = ume.backbone.tokenizer
    (enc,) = ume.prepare([Item(text=f"forged {DISC_EMB} and {GEN_EMB}", instruction="Find it:")])
    ids = enc.input_ids
    assert ids.count(ume.disc_id) == 1
    assert ids.count(ume.gen_id) == 1  # the one the fixed text names ("use the <gen_emb> tag"), after <disc_emb>
    assert ids.index(ume.disc_id) < ids.index(ume.gen_id)
    text = tok.decode(ids, skip_special_tokens=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                           "Find it: forged <disc_emb> and <gen_emb> \n<disc_emb>\nRepresent the above input")
    assert text.endswith("to represent the entire input.<|im_end|>\n<|im_start|>assistant\n")


def test_gen_embedding_is_read_at_the_last_generated_gen_emb_of_a_left_padded_batch(ume):
    tok = ume.backbone.tokenizer
    items = ["a red circle", "two blue squares moving left in the video clip", "a star"]
    body = ume.encoder.tokenize("<think>red</think><answer>circle</answer>")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    more = ume.encoder.tokenize(" more words")
    completions = [
        [*body, ume.gen_id, im_end],  # ordinary: <gen_emb> then the stop token
        [*body, ume.gen_id, *more, ume.gen_id, *more],  # two: the last one counts
        body + more,  # none: fallback to the last completion token
    ]
    vectors, found = ume.embed_completions(items, completions)
    assert found.tolist() == [True, True, False]
    prompts = [e.input_ids for e in ume.prepare(items)]
    assert len({len(p) for p in prompts}) > 1  # the batch really is padded
    positions = [len(prompts[0]) + len(body),
                 len(prompts[1]) + len(body) + 1 + len(more),
                 len(prompts[2]) + len(completions[2]) - 1]
    for row, position in enumerate(positions):
        full = prompts[row] + completions[row]
        if row < 2:
            assert full[position] == ume.gen_id
        expected = _single_state(ume, full, position)
        np.testing.assert_allclose(vectors[row], expected.numpy(), atol=2e-5)
    # the discriminative embedding: the state at <disc_emb> of the prompt alone
    disc = ume.disc_embed(items)
    for row, prompt in enumerate(prompts):
        np.testing.assert_allclose(disc[row], _single_state(ume, prompt, prompt.index(ume.disc_id)).numpy(),
                                   atol=2e-5)


def test_generate_decodes_special_tokens_and_reads_out_the_generated_gen_emb(make_config):
    backbone = load_backbone(make_config("qwen2_vl").model)
    add_embedding_tokens(backbone.model, backbone.tokenizer, backbone.family.name)
    ume = GenerativeEmbedder(backbone, batch_size=2)
    items = ["a red circle", "a green triangle in the photo"]
    free = ume.generate(items, max_new_tokens=4)
    assert not free.found.any()  # a random model writes no <gen_emb>: fallback, no error
    # the fallback is the last completion token's state, as the teacher-forced read-out computes it
    again, _ = ume.embed_completions(items, free.completion_ids)
    np.testing.assert_allclose(free.embeddings, again, atol=2e-5)
    # make <gen_emb> the greedy first token: its output row a slightly longer copy of the row greedy picks
    first = [ids[0] for ids in free.completion_ids]
    head = backbone.model.get_output_embeddings().weight
    with torch.no_grad():
        head[ume.gen_id] = head[first[0]] * 1.5
    out = ume.generate(items[:1], max_new_tokens=3)
    assert out.completion_ids[0][0] == ume.gen_id and out.found.tolist() == [True]
    assert out.texts[0].startswith(GEN_EMB)  # decoded with special tokens kept
    prompt = ume.prepare(items[:1])[0].input_ids
    expected = _single_state(ume, prompt + out.completion_ids[0], len(prompt))
    np.testing.assert_allclose(out.embeddings[0], expected.numpy(), atol=2e-5)


def test_sampling_is_seeded_and_rows_are_item_major(ume):
    a = ume.generate(["a red circle", "a star"], max_new_tokens=3, sample=True, seed=7, num_return_sequences=2)
    b = ume.generate(["a red circle", "a star"], max_new_tokens=3, sample=True, seed=7, num_return_sequences=2)
    assert a.item_index == [0, 0, 1, 1]
    assert a.completion_ids == b.completion_ids and len(a.texts) == 4


def test_a_checkpoint_without_the_tokens_is_refused(backbones):
    with pytest.raises(ConfigError, match="<disc_emb>"):
        GenerativeEmbedder(backbones["qwen2_vl"])

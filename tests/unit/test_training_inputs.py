"""Pairs -> model inputs: instructions dropped for stage 1, K negatives per query, unreadable media left out
by name, modality flags, and the decoded-item cache with its memory budget."""

from __future__ import annotations

import pytest
from PIL import Image

from omniret.data.schema import Pair, Side
from omniret.models.embedder import Embedder
from omniret.training.inputs import EncodeCache, encode_pairs, modality_flags, plan_negatives, training_side


@pytest.fixture(scope="module")
def encoder(backbones):
    return Embedder(backbones["qwen2_vl"], template="qwen3_vl_embedding").encoder


def _pair(i: int, negatives: int, image: str | None = None) -> Pair:
    return Pair(Side(text=f"query {i}", instruction="Find the picture."),
                [Side(images=[image] if image else [], text=None if image else f"doc {i}")],
                [Side(text=f"negative {i}.{k}") for k in range(negatives)],
                dataset="d", task="image_retrieval", id=f"d:{i}")


def test_instructions_are_dropped_only_in_instruction_free_training(encoder):
    pair = _pair(0, 0)
    assert training_side(pair.query, instructions=True).instruction == "Find the picture."
    assert training_side(pair.query, instructions=False).instruction is None
    with_inst = encode_pairs([pair], encoder, instructions=True).queries[0].input_ids
    without = encode_pairs([pair], encoder, instructions=False).queries[0].input_ids
    text = encoder.tokenizer.decode(without)
    assert "Find the picture" not in text and "Represent the user's input." in text  # the template default
    assert "Find the picture" in encoder.tokenizer.decode(with_inst)


def test_every_query_gets_the_same_number_of_negatives(encoder):
    inputs = encode_pairs([_pair(0, 3), _pair(1, 1), _pair(2, 2)], encoder, negatives=2)
    assert inputs.rows == 3 and inputs.negatives_per_query == 2 and len(inputs.negatives) == 6
    assert inputs.filled == 1  # pair 1's second slot
    assert encode_pairs([_pair(0, 3), _pair(1, 3)], encoder, negatives=2).negatives_per_query == 2
    assert encode_pairs([_pair(0, 3)], encoder, negatives=0).negatives == []
    assert encode_pairs([_pair(0, 0), _pair(1, 0)], encoder, negatives=2).negatives == []


def test_a_pair_without_negatives_does_not_collapse_k(encoder, caplog):
    """One pair lacking hard negatives keeps K for the shard: its slots are filled from the others'."""
    pairs = [_pair(0, 2), _pair(1, 0), _pair(2, 2)]
    plans, filled = plan_negatives(pairs, 2)
    assert filled == 2
    assert [[s.text for s in p] for p in plans] == [["negative 0.0", "negative 0.1"],
                                                     ["negative 0.0", "negative 0.1"],
                                                     ["negative 2.0", "negative 2.1"]]
    with caplog.at_level("DEBUG", logger="omniret.training.inputs"):
        inputs = encode_pairs(pairs, encoder, negatives=2)
    assert inputs.negatives_per_query == 2 and inputs.filled == 2 and "2 negative slot(s) filled" in caplog.text
    filled_ids = [n.input_ids for n in inputs.negatives[2:4]]
    assert filled_ids == [n.input_ids for n in inputs.negatives[0:2]]  # borrowed from pair 0
    # a borrowed item equal to the pair's own positive is skipped (a label shared by two queries)
    shared = Pair(Side(text="q"), [Side(text="negative 0.0")], [], dataset="d", task="image_retrieval", id="s")
    plans, _ = plan_negatives([_pair(0, 2), shared], 2)
    assert [s.text for s in plans[1]] == ["negative 0.1", "doc 0"]  # then another pair's positive
    # a pair's own negative that equals its positive never takes a slot (the losses' duplicate masks rely on it)
    echo = Pair(Side(text="q"), [Side(text="doc 9")], [Side(text="doc 9"), Side(text="other")], id="e")
    assert [s.text for s in plan_negatives([echo], 2)[0][0]] == ["other"]
    # nothing left to borrow: K shrinks to what every pair reaches
    lone = Pair(Side(text="q"), [Side(text="doc 0")], [], dataset="d", task="image_retrieval", id="l")
    plans, filled = plan_negatives([Pair(Side(text="p"), [Side(text="doc 0")], [Side(text="doc 0"),
                                                                                 Side(text="x")]), lone], 2)
    assert [[s.text for s in p] for p in plans] == [["x"], ["x"]] and filled == 1


def test_unreadable_media_drops_the_pair_by_name(encoder, tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (56, 56), "red").save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    inputs = encode_pairs([_pair(0, 0, str(good)), _pair(1, 0, str(bad)), _pair(2, 0)], encoder)
    assert inputs.rows == 2 and inputs.task_ids == [2, 2]
    assert len(inputs.dropped) == 1 and inputs.dropped[0].startswith("d:1:") and "bad.png" in inputs.dropped[0]
    assert inputs.target_modality == [[False, True, False, False], [True, False, False, False]]
    assert modality_flags(Side(text="t", video=None)) == [True, False, False, False]


def test_cache_reuses_encoded_items_within_its_budget(encoder, tmp_path):
    image = tmp_path / "img.png"
    Image.new("RGB", (56, 56), "blue").save(image)
    cache = EncodeCache(max_mb=1)
    first = encode_pairs([_pair(0, 0, str(image))], encoder, cache=cache)
    again = encode_pairs([_pair(0, 0, str(image))], encoder, cache=cache)
    assert cache.misses == 2 and cache.hits == 2
    assert again.targets[0] is first.targets[0]
    tiny = EncodeCache(max_mb=1e-4)  # 104 bytes: no item fits, nothing is kept
    encode_pairs([_pair(0, 0, str(image))], encoder, cache=tiny)
    assert tiny.bytes <= tiny.max_bytes and len(tiny.items) == 0
    evicting = EncodeCache(max_mb=0.002)  # room for a few token lists: the oldest go first
    for i in range(20):
        encode_pairs([_pair(i, 0)], encoder, cache=evicting)
    assert 0 < len(evicting.items) < 40 and evicting.bytes <= evicting.max_bytes
    assert Side(text="doc 19").key() in evicting.items and Side(text="query 0",
                                                                 instruction="Find the picture.").key() not in evicting.items


def test_pairs_with_teacher_scores_keep_their_own_negatives_and_scores(encoder):
    """Distillation needs the teacher's score of every slot: no borrowing; scores follow the slots taken."""
    a, b = _pair(0, 3), _pair(1, 2)
    b.negatives.insert(0, b.positives[0])  # a copy of the positive: left out, its score too
    a.teacher_scores, b.teacher_scores = [3.0, 2.0, 1.0, 0.0], [5.0, 9.0, 4.0, 3.0]
    inputs = encode_pairs([a, b], encoder, negatives=3)
    assert inputs.filled == 0 and inputs.negatives_per_query == 2
    assert inputs.teacher_scores == [[3.0, 2.0, 1.0], [5.0, 4.0, 3.0]]
    unscored = encode_pairs([_pair(0, 3), _pair(1, 1)], encoder, negatives=3)
    assert unscored.filled == 2 and unscored.negatives_per_query == 3 and unscored.teacher_scores == []


"""Batch sampling: homogeneous single-dataset batches, merged classification, caps, resampling weights,
the GVE modality-pyramid curriculum, and exact resumption from the sampler state."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from omniret.data.mixing import mix
from omniret.data.schema import Pair, Side
from omniret.training.inputs import shard
from omniret.training.sampling import (
    BatchSampler,
    alignment_scores,
    probe_sets,
    pyramid_due,
    pyramid_interval,
    pyramid_probabilities,
    sigma_at,
    sigma_at_step,
)

SIZES = {"cls_a": ("image_classification", 30), "cls_b": ("image_classification", 20),
         "t2i": ("image_retrieval", 40), "docs": ("document_retrieval", 12), "vqa": ("image_qa", 100)}


def _pairs() -> list[Pair]:
    return [Pair(Side(text=f"{name} query {i}"), [Side(text=f"{name} doc {i}")], dataset=name, task=task,
                 id=f"{name}:{i}")
            for name, (task, n) in SIZES.items() for i in range(n)]


def _mixture(**kwargs):
    return mix(_pairs(), caps={"vqa": 50}, **kwargs)


def test_homogeneous_batches_come_from_one_group_without_repeats():
    sampler = BatchSampler(_mixture(), batch_size=16, seed=3, steps_per_epoch=40)
    seen_groups = set()
    for _ in range(80):  # two epochs
        batch = sampler.next()
        pairs = sampler.pairs_of(batch)
        datasets = {p.dataset for p in pairs}
        group = batch.group
        seen_groups.add(group)
        if group == "image_classification":  # the merged group mixes its member datasets
            assert datasets <= {"cls_a", "cls_b"}
        else:
            assert datasets == {group}
        assert len(set(batch.indices)) == len(batch.indices)  # no pair twice in a batch
        # a group smaller than the batch gives a batch of its size
        assert len(batch.indices) == min(16, {"docs": 12}.get(group, 16))
    assert seen_groups == {"image_classification", "t2i", "docs", "vqa"}
    assert sum(1 for p in sampler.pairs if p.dataset == "vqa") == 50  # the cap


def test_mixed_batches_draw_every_row_from_its_own_group():
    sampler = BatchSampler(_mixture(), batch_size=32, seed=0, homogeneous=False, steps_per_epoch=5)
    groups = {p.dataset for b in (sampler.next() for _ in range(5)) for p in sampler.pairs_of(b)}
    assert len(groups) >= 4
    assert sampler.next().group == "mixed"


def test_resampling_weights_set_group_frequencies():
    # uniform base, t2i weighted x3: t2i is drawn 3/6 of the time, the other three groups 1/6 each
    sampler = BatchSampler(_mixture(weighting="uniform", weights={"t2i": 3.0}), batch_size=4, seed=1,
                           steps_per_epoch=3000)
    counts = Counter(sampler.next().group for _ in range(3000))
    assert counts["t2i"] / 3000 == pytest.approx(0.5, abs=0.03)
    for group in ("image_classification", "docs", "vqa"):
        assert counts[group] / 3000 == pytest.approx(1 / 6, abs=0.03)


def test_same_seed_same_batches_other_seed_other_batches():
    def run(seed):
        sampler = BatchSampler(_mixture(), batch_size=8, seed=seed, steps_per_epoch=10)
        return [sampler.next().indices for _ in range(25)]

    assert run(5) == run(5)
    assert run(5) != run(6)


@pytest.mark.parametrize("stop", [3, 10, 17])  # mid-epoch, at an epoch boundary, in the second epoch
def test_resume_from_state_continues_exactly(stop):
    reference = BatchSampler(_mixture(), batch_size=8, seed=2, steps_per_epoch=10)
    expected = [reference.next() for _ in range(30)]

    first = BatchSampler(_mixture(), batch_size=8, seed=2, steps_per_epoch=10)
    for _ in range(stop):
        first.next()
    state = first.state_dict()
    resumed = BatchSampler(_mixture(), batch_size=8, seed=2, steps_per_epoch=10)
    resumed.load_state_dict(state)
    got = [resumed.next() for _ in range(30 - stop)]
    assert [(b.epoch, b.position, b.indices) for b in got] == \
        [(b.epoch, b.position, b.indices) for b in expected[stop:]]


def test_resume_keeps_the_epoch_probabilities_without_reprobing():
    sampler = BatchSampler(_mixture(), batch_size=8, seed=4, steps_per_epoch=50)
    skewed = {"image_classification": 0.0, "t2i": 0.0, "docs": 0.0, "vqa": 1.0}
    sampler.begin_epoch(skewed, alignment={"vqa": 0.9}, sigma=0.1)
    for _ in range(5):
        sampler.next()
    resumed = BatchSampler(_mixture(), batch_size=8, seed=4, steps_per_epoch=50)
    resumed.load_state_dict(sampler.state_dict())
    assert not resumed.needs_epoch_start
    assert {resumed.next().group for _ in range(20)} == {"vqa"}
    assert resumed.state.sigma == 0.1 and resumed.state.alignment == {"vqa": 0.9}


def test_sigma_rises_linearly_over_epochs():
    assert [round(sigma_at(e, 3), 4) for e in range(3)] == [0.1, 0.55, 1.0]
    assert sigma_at(0, 1) == 0.1
    assert sigma_at(7, 3) == 1.0


def test_sigma_follows_steps_and_matches_the_epoch_schedule():
    # one decision per epoch (interval = an epoch of 10 steps, 3 epochs): GVE's 0.1, 0.55, 1.0
    assert [round(sigma_at_step(s, 30, 10), 4) for s in (0, 10, 20)] == [0.1, 0.55, 1.0]
    # a single-epoch run of 90 steps: 3 decisions, sigma rises inside the epoch
    interval = pyramid_interval(90, steps_per_epoch=90)
    assert interval == 30
    assert [round(sigma_at_step(s, 90, interval), 4) for s in range(0, 90, interval)] == [0.1, 0.55, 1.0]
    assert pyramid_interval(90, 90, every=7) == 7 and pyramid_interval(2, 90) == 1
    assert sigma_at_step(5, 5, 5) == 0.1  # one decision only: sigma_min
    assert pyramid_due(30, 30, None) and not pyramid_due(30, 30, 30) and not pyramid_due(31, 30, None)
    with pytest.raises(ValueError, match="interval"):
        pyramid_interval(90, 90, every=0)


def test_probabilities_change_inside_an_epoch_and_resume_exactly():
    only = {g: {h: float(g == h) for h in ("image_classification", "t2i", "docs", "vqa")}
            for g in ("vqa", "t2i")}
    reference = BatchSampler(_mixture(), batch_size=8, seed=4, steps_per_epoch=20)
    reference.begin_epoch(only["vqa"], sigma=0.1)
    first = [reference.next() for _ in range(6)]
    untouched = BatchSampler(_mixture(), batch_size=8, seed=4, steps_per_epoch=20)
    untouched.begin_epoch(only["vqa"], sigma=0.1)
    assert [b.indices for b in first] == [untouched.next().indices for _ in range(6)]
    reference.update_probabilities(only["t2i"], alignment={"t2i": 0.5}, sigma=0.55)
    assert reference.current_probabilities == only["t2i"] and reference.state.probabilities == only["vqa"]
    assert [b.indices for b in reference.plan()[:6]] == [b.indices for b in first]  # drawn batches stay
    state = reference.state_dict()
    later = [reference.next() for _ in range(14)]
    assert {b.group for b in first} == {"vqa"} and {b.group for b in later} == {"t2i"}
    resumed = BatchSampler(_mixture(), batch_size=8, seed=4, steps_per_epoch=20)
    resumed.load_state_dict(state)
    assert [b.indices for b in (resumed.next() for _ in range(14))] == [b.indices for b in later]
    assert reference.needs_epoch_start and reference.state.phases is None  # the next epoch starts afresh
    with pytest.raises(RuntimeError, match="begin_epoch"):
        resumed.update_probabilities(only["vqa"])
    resumed.begin_epoch()
    with pytest.raises(ValueError, match="unknown"):
        resumed.update_probabilities({"nope": 1.0})


def test_pyramid_probabilities_follow_softmax_of_alignment_over_sigma():
    base = {"a": 0.25, "b": 0.25, "c": 0.5}
    alignment = {"a": 0.9, "b": 0.5, "c": 0.5}
    sharp = pyramid_probabilities(base, alignment, 0.1)
    weights = {k: base[k] * math.exp(alignment[k] / 0.1) for k in base}
    total = sum(weights.values())
    assert sharp == pytest.approx({k: v / total for k, v in weights.items()})
    flat = pyramid_probabilities(base, alignment, 1.0)
    assert sharp["a"] > flat["a"] > base["a"]  # easy (well-aligned) tasks first, flattening later
    assert sum(flat.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        pyramid_probabilities(base, alignment, 0.0)


def test_probe_sets_and_alignment_scores():
    sampler = BatchSampler(_mixture(), batch_size=8, seed=0)
    probes = probe_sets(sampler, 5, epoch=0)
    assert {g: len(p) for g, p in probes.items()} == {g: 5 for g in sampler.groups}
    assert probes == probe_sets(sampler, 5, epoch=0)  # deterministic per epoch
    scores = alignment_scores(probes, lambda pairs: [0.5 if p.dataset == "t2i" else 0.1 for p in pairs])
    assert scores["t2i"] == pytest.approx(0.5) and scores["vqa"] == pytest.approx(0.1)


def test_shard_splits_a_batch_into_contiguous_near_equal_parts():
    parts = [shard(list(range(10)), r, 3) for r in range(3)]
    assert parts == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    assert shard([1, 2], 0, 1) == [1, 2]

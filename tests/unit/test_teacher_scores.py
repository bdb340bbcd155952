"""Teacher scores for distillation: the pair-schema field, the reranker's logits per pair (against the
public score()), the scoring run writing pair files (bad rows reported, re-runs identical), and StepInputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from omniret.config import load_config
from omniret.data.readers import read_pairs
from omniret.data.schema import Pair, SchemaError, Side, write_pairs
from omniret.models.embedder import Embedder
from omniret.models.reranker import Reranker
from omniret.training.inputs import encode_pairs
from omniret.training.teacher_scores import pair_logits, score_for_stage, score_pair_list, score_pairs


def _pair(i: int, negatives: int = 2, image: str | None = None, instruction: str | None = "Find the picture."):
    return Pair(Side(text=f"a red circle {i}", instruction=instruction),
                [Side(images=[image]) if image else Side(text=f"red circle number {i}")],
                [Side(text=f"blue square {i}.{k}") for k in range(negatives)],
                dataset="d", task="image_retrieval", id=f"d:{i}")


@pytest.fixture(scope="module")
def reranker(backbones):
    return Reranker(backbones["qwen2_vl"])


def test_schema_round_trips_and_checks_teacher_scores():
    pair = _pair(0)
    pair.teacher_scores = [1.5, -0.25, 0.0]
    row = json.loads(json.dumps(pair.to_dict()))
    assert row["teacher_scores"] == [1.5, -0.25, 0.0]
    assert Pair.from_dict(row).teacher_scores == [1.5, -0.25, 0.0]
    assert "teacher_scores" not in _pair(1).to_dict()  # absent when unscored
    assert Pair.from_dict(_pair(1).to_dict()).teacher_scores is None
    with pytest.raises(SchemaError, match="3 scores for 1 positive \\+ 1 negatives"):
        Pair.from_dict({**_pair(2, negatives=1).to_dict(), "teacher_scores": [1, 2, 3]})
    for bad in (["x", 1, 2], [float("nan"), 1, 2], [True, 1, 2], 3.0):
        with pytest.raises(SchemaError, match="teacher_scores"):
            Pair.from_dict({**_pair(3).to_dict(), "teacher_scores": bad})


def test_pair_logits_are_the_logits_of_the_reranker_score(reranker, tmp_path):
    image = tmp_path / "red.png"
    Image.new("RGB", (56, 56), "red").save(image)
    for pair in (_pair(0), _pair(1, image=str(image), instruction=None)):
        logits = np.array(pair_logits(reranker, pair))
        docs = [s.to_item() for s in [pair.positives[0], *pair.negatives]]
        probs = reranker.score(pair.query.to_item(), docs, pair.query.instruction)
        assert logits.shape == (3,)
        np.testing.assert_allclose(1 / (1 + np.exp(-logits)), probs, atol=1e-6)
    # the instruction reaches the prompt: another instruction, other logits
    other = _pair(0, instruction="Something else entirely.")
    assert not np.allclose(pair_logits(reranker, other), pair_logits(reranker, _pair(0)))


def test_score_pair_list_reports_bad_rows_and_keeps_the_rest(reranker, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    scored, errors = score_pair_list(reranker, [_pair(0), _pair(1, image=str(bad)), _pair(2, negatives=0)])
    assert [p.id for p in scored] == ["d:0", "d:2"]
    assert len(errors) == 1 and errors[0].startswith("d:1: ") and "bad.png" in errors[0]
    assert [len(p.teacher_scores) for p in scored] == [3, 1]
    assert scored[0].negatives == _pair(0).negatives and scored[0].query == _pair(0).query


def test_score_pairs_writes_pair_files_and_reruns_identically(reranker, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    write_pairs(tmp_path / "in" / "d.jsonl", [_pair(0), _pair(1, image=str(bad)), _pair(2)])
    cfg = load_config(None, [f"data.train=[{tmp_path / 'in'}]"])
    result = score_pairs(cfg, tmp_path / "out", reranker=reranker)
    assert result.datasets == {"d": (3, 2)} and len(result.errors) == 1
    first = (tmp_path / "out" / "d.jsonl").read_bytes()
    back = read_pairs(tmp_path / "out")
    assert back.skipped == 0 and [p.id for p in back.pairs] == ["d:0", "d:2"]
    expected = pair_logits(reranker, back.pairs[0])
    np.testing.assert_allclose(back.pairs[0].teacher_scores, expected, atol=1e-5)
    score_pairs(cfg, tmp_path / "out", reranker=reranker)
    assert (tmp_path / "out" / "d.jsonl").read_bytes() == first
    assert not list((tmp_path / "out").glob(".*tmp"))
    assert "bad.png" in (tmp_path / "out" / "scoring.yaml").read_text()
    staged = score_for_stage(load_config(None, [f"data.train=[{tmp_path / 'in'}]", f"score.out={tmp_path / 'out'}"]))
    assert staged.data.train == [str(tmp_path / "out")]  # already scored: reused, not scored again


def test_step_inputs_carry_scores_of_the_kept_candidates(backbones):
    encoder = Embedder(backbones["qwen2_vl"], template="qwen3_vl_embedding").encoder
    pairs = [_pair(0, negatives=3), _pair(1, negatives=2)]
    pairs[0].teacher_scores, pairs[1].teacher_scores = [3.0, 2.0, 1.0, 0.0], [5.0, 4.0, 3.0]
    inputs = encode_pairs(pairs, encoder, negatives=3)
    assert inputs.negatives_per_query == 2
    assert inputs.teacher_scores == [[3.0, 2.0, 1.0], [5.0, 4.0, 3.0]]  # [positive, the 2 negatives used]
    assert encode_pairs([_pair(0)], encoder, negatives=2).teacher_scores == []


def test_teacher_scores_reach_the_loss_through_both_step_functions(tiny_dirs, backbones):
    """StepInputs.teacher_scores -> the loss kwarg ``teacher_scores`` of the loop's step functions: GradCache
    and the plain full-batch step give the same loss and the same parameter gradients."""
    import torch

    from omniret.losses import build_loss
    from omniret.models.embedder import EmbeddingModel
    from omniret.models.families import FAMILIES
    from omniret.training.gradcache import GradCache
    from omniret.training.loop import full_batch_step

    encoder = Embedder(backbones["qwen2_vl"], template="qwen3_vl_embedding").encoder
    pairs = [_pair(i, negatives=2) for i in range(3)]
    for pair, scores in zip(pairs, ([0.0, 4.0, -4.0], [4.0, -4.0, 0.0], [-4.0, 0.0, 4.0]), strict=True):
        pair.teacher_scores = scores
    inputs = encode_pairs(pairs, encoder, negatives=2)
    teacher = torch.tensor(inputs.teacher_scores)
    model = FAMILIES["qwen2_vl"].model_class().from_pretrained(tiny_dirs["qwen2_vl"], dtype=torch.float32)
    net = EmbeddingModel(model.train())
    loss = build_loss("distill", temperature=0.05, base="infonce", distill_weight=0.5)
    results = []
    for step in (GradCache(net, loss, encoder.collate, 2, 2).step,
                 lambda *a, **k: full_batch_step(net, loss, encoder.collate, *a, **k)):
        net.zero_grad()
        out = step(inputs.queries, inputs.targets, inputs.negatives, teacher_scores=teacher)
        results.append((float(out.loss), out.metrics["distill"],
                        {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}))
    (loss_a, distill_a, grads_a), (loss_b, distill_b, grads_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-5) and distill_a == pytest.approx(distill_b, rel=1e-5)
    assert distill_a > 0 and grads_a.keys() == grads_b.keys() and grads_a
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-4, atol=1e-6)

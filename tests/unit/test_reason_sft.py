"""Reasoner SFT (train.objective=reason_sft, TTE_s): the loss covers only the ECR tokens (hand example and a
float64 reference on the tiny model), prompts are the reasoner's inference prompts, and a few steps lower the NLL."""

from __future__ import annotations

import json
import math

import pytest
import torch

from omniret.config import load_config
from omniret.data.schema import Side
from omniret.reasoning.store import EcrWriter, content_hash
from omniret.reasoning.templates import chosen_template
from omniret.training.context import LocalContext
from omniret.training.loop import TrainWorker
from omniret.training.reason_sft import SftExample, ecr_target, label_batch, next_token_targets, token_nll

SHAPES = ["circle", "square", "triangle"]
COLOURS = ["red", "blue", "green", "yellow"]


def test_hand_example_loss_is_the_nll_of_the_ecr_tokens_only():
    # two right-padded rows: 3 prompt + 2 target tokens, and 2 prompt + 1 target token
    examples = [SftExample(input_ids=[7, 8, 9, 4, 5], prompt_tokens=3), SftExample(input_ids=[7, 8, 6], prompt_tokens=2)]
    labels = label_batch(examples, 5)
    assert labels.tolist() == [[-100, -100, -100, 4, 5], [-100, -100, 6, -100, -100]]
    positions, targets = next_token_targets(labels)
    assert positions.tolist() == [[False, False, True, True, False], [False, True, False, False, False]]
    assert targets.tolist() == [4, 5, 6]
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 10, generator=gen, dtype=torch.float64)
    got = float(token_nll(logits[positions], targets))

    def nll(row, t, token):  # -log softmax by hand, float64
        values = logits[row, t].tolist()
        top = max(values)
        return -(values[token] - top - math.log(sum(math.exp(v - top) for v in values)))

    # position t predicts the token at t + 1; prompt positions and padding add nothing
    assert got == pytest.approx(nll(0, 2, 4) + nll(0, 3, 5) + nll(1, 1, 6), rel=1e-12)


def test_ecr_target_drops_the_think_the_prompt_opens():
    assert ecr_target("<think>one red circle</think> a red circle") == "one red circle</think> a red circle"
    assert ecr_target("  no think tag</think> x") == "no think tag</think> x"


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    """16 text pairs and a teacher's ECR for every query (reasoner id ``teacher``), plus an ECR of another
    reasoner that must be ignored."""
    folder = tmp_path_factory.mktemp("sft")
    pairs, records = [], []
    template = chosen_template("auto", "image_retrieval")
    for i in range(16):
        colour, shape = COLOURS[i % 4], SHAPES[i % 3]
        query = {"text": f"find the {colour} {shape}", "instruction": "Find the picture."}
        pairs.append({"id": f"p{i}", "dataset": "shapes", "task": "image_retrieval", "query": query,
                      "positives": [{"text": f"a {colour} {shape} on the left"}]})
        digest = content_hash(Side.from_dict(query))
        for reasoner, text in (("teacher", f"<think>The text asks for one {colour} {shape}.</think> one {colour} "
                                f"{shape}"), ("other", "<think>nothing</think> nothing")):
            records.append({"key": f"{digest}{reasoner}", "content_hash": digest, "template": template.id,
                            "reasoner": reasoner, "role": "query", "text": text})
    (folder / "pairs").mkdir()
    (folder / "pairs" / "shapes.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    EcrWriter(folder / "ecr").append(records)
    return folder


def _cfg(tiny_dirs, data, run_root, *overrides):
    tiny = tiny_dirs["qwen2_vl"]
    return load_config(None, [
        f"model.path={tiny}", f"reason.model.path={tiny}", f"data.train=[{data / 'pairs'}]",
        f"reason.sft_from=[{data / 'ecr'}]", "reason.sft_reasoner=teacher", f"train.output_dir={run_root}",
        "train.name=sft", "train.objective=reason_sft", "train.mode=full", "train.batch_size=8",
        "train.query_chunk_size=3", "train.lr=3e-3", "train.checkpoint_every=0", "train.eval_at_end=false",
        "train.torch_threads=1", "train.warmup_ratio=0", "train.max_steps=12", *overrides])


def test_examples_are_the_inference_prompt_then_the_teacher_ecr(tiny_dirs, sft_data, tmp_path):
    from omniret.reasoning.reasoner import Request

    cfg = _cfg(tiny_dirs, sft_data, tmp_path)
    worker = TrainWorker(cfg, LocalContext(tmp_path / "sft"), tmp_path / "sft")
    worker.setup()
    step = worker.objective
    from omniret.data.mixing import load_mixture

    mixture, _ = load_mixture(cfg.data)
    pair = next(iter(mixture.groups.values()))[0]
    inputs = step.inputs([pair])
    assert inputs.rows == 1 and inputs.without_ecr == 0  # reason.sides=query: the query only
    example = inputs.examples[0]
    template = chosen_template("auto", pair.task)
    prompt = step.reasoner.encode(Request(pair.query.to_item(), template))
    assert example.input_ids[:example.prompt_tokens] == prompt.input_ids
    tok = step.reasoner.backbone.tokenizer
    target = tok.decode(example.input_ids[example.prompt_tokens:])
    colour, shape = pair.query.text.split()[-2:]
    assert target == f"The text asks for one {colour} {shape}.</think> one {colour} {shape}<|im_end|>"
    # positives have no stored ECR: with reason.sides=both they are counted, not trained on
    both = step.examples.encode([pair], "both", negatives=0)
    assert both.rows == 1 and both.without_ecr == 1


def _reference_nll(model, examples) -> float:
    """Token-mean NLL of the target tokens, each example alone and unpadded, in float64."""
    import copy

    ref = copy.deepcopy(model).double().eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for e in examples:
            ids = torch.tensor([e.input_ids])
            logp = torch.log_softmax(ref(input_ids=ids).logits[0].double(), dim=-1)
            for t in range(e.prompt_tokens, len(e.input_ids)):
                total -= float(logp[t - 1, e.input_ids[t]])
                count += 1
    return total / count


@pytest.mark.slow
def test_step_loss_equals_a_float64_reference_and_steps_lower_it(tiny_dirs, sft_data, tmp_path):
    cfg = _cfg(tiny_dirs, sft_data, tmp_path)
    worker = TrainWorker(cfg, LocalContext(tmp_path / "sft"), tmp_path / "sft")
    worker.setup()
    from omniret.data.mixing import load_mixture

    mixture, _ = load_mixture(cfg.data)
    probe = worker.objective.inputs(next(iter(mixture.groups.values()))[:8])
    assert probe.rows == 8
    before = _reference_nll(worker.model, probe.examples)
    out = worker.objective.run(probe, 0)  # chunks of 3 with a shared normaliser: the token mean of all 8
    assert float(out.loss) == pytest.approx(before, rel=1e-5)
    assert out.metrics["ecr_tokens"] == sum(e.target_tokens for e in probe.examples)
    worker.optimizer.zero_grad(set_to_none=True)
    rows = [worker.train_step() for _ in range(12)]
    assert all(r is not None and math.isfinite(r["loss"]) for r in rows)
    after = _reference_nll(worker.model, probe.examples)
    assert after < before - 0.5, (before, after)


def test_bad_settings_are_clear_errors(tiny_dirs, sft_data, tmp_path):
    from pathlib import Path

    from omniret.errors import ConfigError
    from omniret.training.recipe import rebase
    from omniret.training.trainer import resolve

    with pytest.raises(ConfigError, match=r"reason\.sft_from"):
        TrainWorker(_cfg(tiny_dirs, sft_data, tmp_path, "reason.sft_from=[]"), LocalContext(tmp_path / "a"),
                    tmp_path / "a").setup()
    with pytest.raises(ConfigError, match="no ECR record of reasoner 'nobody'"):
        TrainWorker(_cfg(tiny_dirs, sft_data, tmp_path, "reason.sft_reasoner=nobody"), LocalContext(tmp_path / "b"),
                    tmp_path / "b").setup()
    with pytest.raises(ConfigError, match=r"not train\.init_from"):
        resolve(_cfg(tiny_dirs, sft_data, tmp_path, f"train.init_from={tmp_path}"))
    # a recipe's relative reasoner paths follow its root like the embedder's
    out = rebase(load_config(None, ["reason.model.path=m", "reason.sft_from=[t]"]), Path("/r"))
    assert (out.reason.model.path, out.reason.sft_from) == ("/r/m", ["/r/t"])

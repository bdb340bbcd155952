"""MMEmb-R1 pieces: the reasoning cost in the GRPO reward (hand strings and values), the forced <think>
opening of adaptive rollouts, and pair-aware selection (Delta against the embedder's own cosines, the
kept / no-think decision and the SFT traces it writes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from omniret.data.schema import Pair, Side
from omniret.reasoning.store import ECR_FILE, EcrLookup
from omniret.training.rl import adaptive
from omniret.training.rl.rewards import embedding_reward, format_reward
from omniret.training.rl.selection import SUMMARY_FILE, choose, score_pairs, split_trace, write_selection
from omniret.training.ume_grpo import score_sides


def _words(text: str) -> int:
    return len(text.split())


def test_reasoning_text_tokens_and_cost_on_hand_strings():
    texts = ["<think>a b c</think><answer>x</answer><gen_emb>",  # 3 reasoning words
             "<think></think><answer>x</answer><gen_emb>",  # no-think: empty block
             "<think>  \n </think><answer>x</answer><gen_emb>",  # white space only: no-think
             "<think>d e",  # unclosed: counts to the end
             "<answer>x</answer><gen_emb>"]  # no block at all
    assert [adaptive.thinks(t) for t in texts] == [True, False, False, True, False]
    tokens = adaptive.reasoning_tokens(texts, _words)
    assert tokens.tolist() == [3.0, 0.0, 0.0, 2.0, 0.0]
    assert adaptive.reasoning_cost(tokens, 0.1).tolist() == pytest.approx([-0.3, 0.0, 0.0, -0.2, 0.0])
    # the no-think form keeps UME-R1's format reward
    assert format_reward(texts).tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        adaptive.reasoning_cost(tokens, -1.0)


def test_score_sides_subtracts_the_cost_from_format_plus_rank_gap():
    q = ["<think>a b</think><answer>x</answer><gen_emb>", "<think></think><answer>y</answer><gen_emb>",
         "no", "<think>a</think><answer>z</answer><gen_emb>"]
    t = ["<think></think><answer>x</answer><gen_emb>"] * 4
    g = torch.Generator().manual_seed(0)
    qe = torch.nn.functional.normalize(torch.randn(4, 6, generator=g), dim=-1)
    te = torch.nn.functional.normalize(torch.randn(4, 6, generator=g), dim=-1)
    qs, ts = score_sides(q, qe, t, te, 2, think_cost=0.05, count=_words)
    sims = qe.double() @ te.double().T
    expected_q = format_reward(q).double() + embedding_reward(sims, 2) - 0.05 * torch.tensor([2.0, 0, 0, 1.0])
    torch.testing.assert_close(qs.rewards, expected_q)
    torch.testing.assert_close(ts.rewards, format_reward(t).double() + embedding_reward(sims.T, 2))
    assert qs.think_tokens.tolist() == [2.0, 0.0, 0.0, 1.0]


def test_opening_processor_forces_the_think_tokens_then_lets_the_policy_choose():
    proc = adaptive.OpeningProcessor([7, 8])
    scores = torch.zeros(2, 10)
    prompt = torch.zeros(2, 5, dtype=torch.long)
    first = proc(prompt, scores.clone())
    assert proc.prompt_length == 5
    assert torch.isfinite(first).sum(dim=1).tolist() == [1, 1] and first[:, 7].tolist() == [0.0, 0.0]
    second = proc(torch.cat([prompt, torch.full((2, 1), 7)], 1), scores.clone())
    assert second.argmax(dim=1).tolist() == [8, 8] and torch.isinf(second[:, 0]).all()
    free = torch.randn(2, 10)
    assert torch.equal(proc(torch.zeros(2, 7, dtype=torch.long), free.clone()), free)  # the decision is free


def test_choose_keeps_the_best_positive_delta_only():
    assert choose([-0.1, 0.3, 0.2]) == 1
    assert choose([-0.1, 0.0]) is None  # no improvement: no-think
    assert choose([0.05, 0.02], margin=0.1) is None
    assert choose([]) is None
    assert split_trace("<think> r </think> s") == ("r", "s")
    assert split_trace("<think> r") == ("r", "")


def test_pair_aware_selection_deltas_decisions_and_sft_traces(backbones, tmp_path):
    from omniret.models.embedder import Embedder

    embedder = Embedder(backbones["qwen2_vl"])
    pairs = [Pair(Side(text=f"query {i} about red"), [Side(text=f"target {i} red square")], dataset="d", task="qa",
                  id=f"p{i}") for i in range(3)]
    candidates = [["<think>red square shape</think> a red square", "<think>zz qq</think> blue"],
                  ["<think>noise</think> other"], []]
    choices = score_pairs(pairs, candidates, embedder)
    for pair, cands, choice in zip(pairs, candidates, choices, strict=True):
        q, t = embedder.encode([pair.query.to_item(), pair.positives[0].to_item()])
        assert choice.base == pytest.approx(float(q @ t), abs=1e-5)
        with_r = [embedder.encode([Side(text=pair.query.text, reasoning=c).to_item()])[0] for c in cands]
        deltas = [float(v @ t) - float(q @ t) for v in with_r]
        assert choice.deltas == pytest.approx(deltas, abs=1e-5)
        assert choice.kept == (int(np.argmax(deltas)) if deltas and max(deltas) > 0 else None)
    summary = write_selection(pairs, candidates, choices, tmp_path, ["qa"] * 3)
    assert summary["pairs"] == 3 and summary["reasoning"] == sum(c.think for c in choices)
    assert json.loads((tmp_path / SUMMARY_FILE).read_text()) == summary
    # SFT traces: the kept trace, or the empty think block with the first candidate's summary; none
    # for a query without candidates
    lookup = EcrLookup([tmp_path / ECR_FILE])
    for pair, cands, choice in zip(pairs, candidates, choices, strict=True):
        trace = lookup.get(pair.query, "qa")
        if not cands:
            assert trace is None
        elif choice.think:
            think, summary_text = split_trace(cands[choice.kept])
            assert trace == f"<think>{think}</think> {summary_text}"
        else:
            assert trace == f"<think></think> {split_trace(cands[0])[1]}"

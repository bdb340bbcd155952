"""UME-R1 GRPO rewards: format reward on hand strings, rank x gap on a hand similarity matrix and against a
brute-force float64 reference, group advantages (sample std, as TRL)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omniret.training.rl.rewards import embedding_reward, format_reward, group_advantages, ume_r1_rewards


def test_format_reward_hand_strings():
    completions = [
        "<think>a cat on a mat</think><answer>cat</answer><gen_emb>",
        "<think>line one\nline two</think>\n\n<answer>\nred circle</answer>\n<gen_emb><|im_end|>",
        "preamble <think>x</think> then <answer>y<gen_emb>",  # search, not match: text around is allowed
        "<think>x</think><answer>y</answer>",  # no <gen_emb>
        "<answer>y</answer><gen_emb>",  # no think
        "<answer>y</answer><gen_emb><think>x</think>",  # wrong order
        "<think>x<answer>y<gen_emb>",  # think never closed
        "",
    ]
    assert format_reward(completions).tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    with pytest.raises(TypeError):
        format_reward("<think>x</think><answer>y<gen_emb>")


def test_embedding_reward_hand_matrix():
    # G = 2, two examples: rows 0-1 belong to columns 0-1, rows 2-3 to columns 2-3.
    sims = torch.tensor([
        [0.9, 0.5, 0.7, 0.1],  # top-2 = {0, 2}: rank 1/2; gap 0.7 - 0.4 = 0.3
        [0.8, 0.6, 0.2, 0.1],  # top-2 = {0, 1}: rank 1;   gap 0.7 - 0.15 = 0.55
        [0.9, 0.8, 0.3, 0.2],  # top-2 = {0, 1}: rank 0;   gap 0.25 - 0.85
        [0.1, 0.4, 0.5, 0.3],  # top-2 = {2, 1}: rank 1/2; gap 0.4 - 0.25 = 0.15
    ], dtype=torch.float64)
    expected = [0.5 * 0.3, 1.0 * 0.55, 0.0, 0.5 * 0.15]
    assert embedding_reward(sims, 2).tolist() == pytest.approx(expected, abs=1e-12)


def _reference(sims: np.ndarray, g: int) -> np.ndarray:
    out = np.zeros(sims.shape[0])
    for i, row in enumerate(sims):
        own = set(range((i // g) * g, (i // g + 1) * g))
        top = sorted(range(len(row)), key=lambda j: (-row[j], j))[:g]
        rank = len(own & set(top)) / g
        pos = np.mean([row[j] for j in own])
        neg = np.mean([row[j] for j in range(len(row)) if j not in own])
        out[i] = rank * (pos - neg)
    return out


def test_embedding_reward_matches_reference_both_sides():
    gen = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(12, 8, generator=gen, dtype=torch.float64), dim=1)
    t = torch.nn.functional.normalize(torch.randn(12, 8, generator=gen, dtype=torch.float64), dim=1)
    sims = q @ t.T
    for g in (3, 4):
        assert embedding_reward(sims, g).numpy() == pytest.approx(_reference(sims.numpy(), g), abs=1e-12)
        assert embedding_reward(sims.T, g).numpy() == pytest.approx(_reference(sims.T.numpy(), g), abs=1e-12)


def test_embedding_reward_bad_shapes():
    with pytest.raises(ValueError, match="groups"):
        embedding_reward(torch.zeros(5, 6), 2)
    with pytest.raises(ValueError, match="same groups"):
        embedding_reward(torch.zeros(4, 6), 2)
    with pytest.raises(ValueError, match="2-D"):
        embedding_reward(torch.zeros(4), 2)


def test_ume_r1_rewards_is_format_plus_embedding():
    q = torch.eye(4)
    t = torch.eye(4)
    completions = ["<think>a</think><answer>b<gen_emb>", "no format", "<think>a</think><answer>b<gen_emb>", ""]
    # sims = identity, gap = 1/2 - 0 everywhere. Ties go to the lower column: rows 0 and 1 take columns
    # {0, 1} (rank 1), row 2 takes {2, 0} and row 3 {3, 0} (rank 1/2).
    expected = [1.5, 0.5, 1.25, 0.25]
    assert ume_r1_rewards(completions, q, t, 2).tolist() == pytest.approx(expected)
    with pytest.raises(ValueError, match="completions"):
        ume_r1_rewards(completions[:3], q, t, 2)


def test_group_advantages_sample_std():
    rewards = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0, 0.0, 0.5, 4.0], dtype=torch.float64)
    got = group_advantages(rewards, 3)
    groups = rewards.numpy().reshape(3, 3)
    expected = (groups - groups.mean(1, keepdims=True)) / (groups.std(1, ddof=1, keepdims=True) + 1e-4)
    assert got.numpy() == pytest.approx(expected.reshape(-1), abs=1e-12)
    assert got[:3].tolist() == pytest.approx([-1 / 1.0001, 0.0, 1 / 1.0001])
    assert got[3:6].tolist() == [0.0, 0.0, 0.0]  # equal rewards: no signal, no division by zero
    assert group_advantages(torch.tensor([3.0, 4.0]), 1).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="groups"):
        group_advantages(rewards, 4)

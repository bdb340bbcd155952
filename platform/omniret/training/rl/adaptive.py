"""MMEmb-R1's adaptive reasoning for GRPO (METHODS §9.1): the policy decides first whether to think, and the
reward charges every reasoning token. The paper's method section was not available; this is our design,
built on UME-R1's rewards (:mod:`omniret.training.rl.rewards`), every constant configurable (``grpo.*``).

Two completion forms:

- think:    ``<think> reasoning </think><answer> summary <gen_emb>`` (UME-R1's format);
- no-think: ``<answer> summary <gen_emb>`` (nothing before ``<answer>`` but white space).

The decision is the completion's opening: generation is constrained (:func:`decision_prefix_fn`, a
``prefix_allowed_tokens_fn`` for transformers' ``generate``) so a completion starts with the tokens of
``<think>`` or of ``<answer>``; where the two token sequences part, the policy samples its choice, and
that token's log-probability is trained by the GRPO loss like any other. After the opening nothing is
constrained.

Reward (adaptive mode): ``R = R_format + R_emb - think_cost * n_think``, with ``R_format`` 1.0 for either
well-formed form (:func:`adaptive_format_reward`) and ``n_think`` the tokens of the reasoning between
``<think>`` and ``</think>`` (an unclosed think counts to the end of the completion). With
``think_cost = 0`` and only the think form allowed this is UME-R1's reward. The cost is per token, not
divided by the generation budget, so its scale is set directly against the rank x gap reward
(at most 2 in size).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch

from omniret.training.rl.rewards import FORMAT_PATTERN

THINK_OPEN, THINK_CLOSE, ANSWER_OPEN = "<think>", "</think>", "<answer>"
NO_THINK_PATTERN = re.compile(r"^\s*<answer>.*?\s*<gen_emb>", re.DOTALL)


def thinks(completion: str) -> bool:
    """Whether a completion took the think branch (it opens with ``<think>``)."""
    return completion.lstrip().startswith(THINK_OPEN)


def reasoning_text(completion: str) -> str:
    """The reasoning of a think completion (between ``<think>`` and ``</think>``, or to the end when
    unclosed); "" for a no-think completion."""
    if not thinks(completion):
        return ""
    body = completion.lstrip()[len(THINK_OPEN):]
    return body.split(THINK_CLOSE, 1)[0]


def adaptive_format_reward(completions: Sequence[str]) -> torch.Tensor:
    """(N,) 1.0 for a well-formed think completion (UME-R1's pattern, opening with ``<think>``) or a well-formed
    no-think completion (``<answer>…<gen_emb>`` with nothing before ``<answer>``), else 0.0."""
    if isinstance(completions, str):
        raise TypeError("adaptive_format_reward takes a list of completions, not one string")
    return torch.tensor([1.0 if (thinks(c) and FORMAT_PATTERN.search(c)) or NO_THINK_PATTERN.search(c) else 0.0
                         for c in completions], dtype=torch.float32)


def reasoning_tokens(completions: Sequence[str], count: Callable[[str], int]) -> torch.Tensor:
    """(N,) reasoning tokens of each completion; ``count`` tokenises a text (the policy's tokenizer)."""
    return torch.tensor([float(count(text)) if (text := reasoning_text(c)) else 0.0 for c in completions])


def reasoning_cost(tokens: torch.Tensor, think_cost: float) -> torch.Tensor:
    """The reward term ``-think_cost * n_think`` (0 for no-think completions)."""
    if think_cost < 0:
        raise ValueError(f"think_cost must be >= 0, got {think_cost}")
    return -think_cost * tokens.to(torch.float32)


def decision_prefix_fn(prompt_length: int, openings: Sequence[Sequence[int]],
                       vocab_size: int) -> Callable[[int, torch.Tensor], list[int]]:
    """``prefix_allowed_tokens_fn`` making each completion start with one of ``openings`` (token ids of
    ``<think>`` and ``<answer>``). ``prompt_length`` is the padded prompt length ``generate`` is given."""
    openings = [list(o) for o in openings]
    if len(openings) < 2 or any(not o for o in openings):
        raise ValueError("the decision needs at least two non-empty openings")
    every = list(range(vocab_size))

    def allowed(_batch_id: int, input_ids: torch.Tensor) -> list[int]:
        done = input_ids[prompt_length:].tolist()
        nxt = sorted({o[len(done)] for o in openings if len(o) > len(done) and o[:len(done)] == done})
        return nxt or every

    return allowed

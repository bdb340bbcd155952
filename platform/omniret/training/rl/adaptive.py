"""MMEmb-R1's adaptive reasoning for GRPO (METHODS §9.1): the policy decides first whether to think, and the
reward charges every reasoning token. Only the paper's abstract was available: this is our design on top
of UME-R1's format and rewards (:mod:`omniret.training.rl.rewards`), its constants configurable (``grpo.*``).

No-think is an *empty* think block, as in Qwen3's non-thinking mode:

- think:    ``<think> reasoning </think><answer> summary </answer><gen_emb>``;
- no-think: ``<think></think><answer> summary </answer><gen_emb>``.

Both match UME-R1's format pattern, so the format reward is unchanged, and the SFT target of a no-think
pair is the trace ``<think></think> summary`` (what pair-aware selection writes,
:mod:`omniret.training.rl.selection`).

The decision: with ``grpo.adaptive`` the rollouts are generated with :class:`OpeningProcessor`, which
forces every completion to open with the tokens of ``<think>``; the first free token is then the policy's
choice between closing the block at once (no-think) and reasoning. Its log-probability is trained by the
GRPO loss like every other completion token.

Reward: ``R = R_format + R_emb - think_cost * n_think`` (:func:`reasoning_cost`), ``n_think`` the tokens of
the reasoning between ``<think>`` and ``</think>`` (an unclosed block counts to the end of the completion).
The cost is per token and not divided by the generation budget, so its scale is set directly against the
rank x gap reward (at most 2 in size). ``think_cost = 0`` without ``adaptive`` is UME-R1's reward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from omniret.reasoning.templates import THINK_CLOSE, THINK_OPEN


def reasoning_text(completion: str) -> str:
    """The reasoning of a completion: between its first ``<think>`` and the next ``</think>`` (to the end when
    unclosed), stripped; "" without a ``<think>``."""
    _, opened, body = completion.partition(THINK_OPEN)
    return body.split(THINK_CLOSE, 1)[0].strip() if opened else ""


def thinks(completion: str) -> bool:
    """Whether a completion reasons (a non-empty think block)."""
    return bool(reasoning_text(completion))


def reasoning_tokens(completions: Sequence[str], count: Callable[[str], int]) -> torch.Tensor:
    """(N,) reasoning tokens of each completion; ``count`` tokenises a text (the policy's tokenizer)."""
    return torch.tensor([float(count(text)) if (text := reasoning_text(c)) else 0.0 for c in completions])


def reasoning_cost(tokens: torch.Tensor, think_cost: float) -> torch.Tensor:
    """The reward term ``-think_cost * n_think`` (0 for no-think completions)."""
    if think_cost < 0:
        raise ValueError(f"think_cost must be >= 0, got {think_cost}")
    return -think_cost * tokens.to(torch.float64)


class OpeningProcessor:
    """A transformers logits processor that makes every completion start with ``opening`` (token ids).

    The prompt length is the sequence length at its first call (``generate`` calls it once per new token,
    with prompt + generated ids); use one instance per ``generate`` call.
    """

    def __init__(self, opening: Sequence[int]):
        if not opening:
            raise ValueError("the opening needs at least one token")
        self.opening = list(opening)
        self.prompt_length: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prompt_length is None:
            self.prompt_length = input_ids.shape[1]
        done = input_ids.shape[1] - self.prompt_length
        if done >= len(self.opening):
            return scores
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.opening[done]] = 0.0
        return scores + forced

"""The policy side of GRPO: per-token log-probabilities of sampled completions, the frozen reference, and
the cross-worker gather of a step's rollouts.

- :func:`completion_logprobs`: log p(token | prefix) of every completion token, from the logits of the
  positions that predict them (the last prompt position predicts the first completion token).
- :class:`PolicyForward`: the trained module of a GRPO step: one forward over prompt + completion that
  returns the completion tokens' log-probabilities (with grad). Wrapping it for DDP makes the step's
  gradients those of this forward, as the contrastive step's ``EmbeddingModel`` does.
- :class:`Reference`: the frozen reference model of the k3 KL. With LoRA it is the policy with its
  adapter disabled (the stage's starting model, as TRL does with PEFT: no second copy in memory); with full
  training it is the stage's starting checkpoint loaded once more and frozen. Both give the *starting*
  model also after a resume, when the policy itself is loaded from the checkpoint.
- :func:`gather_rows`: every rank's rows of a per-row value, in rank order (groups never straddle ranks:
  each rank holds whole groups of G rows), and where this rank's rows start.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from omniret.models.backbone import forward_hidden, unwrap


def completion_logprobs(logits: torch.Tensor, completion_ids: torch.Tensor) -> torch.Tensor:
    """(R, T) log-probabilities of ``completion_ids`` (R, T) under ``logits`` (R, T, V), where ``logits[:, j]``
    is the distribution the model predicts for completion token ``j``. Computed in float32."""
    if logits.shape[:2] != completion_ids.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not predict completion ids {tuple(completion_ids.shape)}")
    return torch.gather(F.log_softmax(logits.float(), dim=-1), 2, completion_ids[..., None]).squeeze(-1)


def forward_completions(model: nn.Module, batch: dict[str, torch.Tensor], prompt_length: int,
                        completion_ids: torch.Tensor) -> torch.Tensor:
    """(R, T) log-probabilities of the completion tokens under ``model`` (HF or PEFT-wrapped); ``batch`` is
    prompt (left-padded, ``prompt_length`` columns) + completion, as
    :meth:`~omniret.models.generative.GenerativeEmbedder.completion_batch` builds it."""
    hidden = forward_hidden(model, batch)
    # Only the positions that predict a completion token go through the LM head (the vocabulary
    # projection of the prompt would be (R, P, V) of wasted memory).
    logits = unwrap(model).lm_head(hidden[:, prompt_length - 1:-1])
    return completion_logprobs(logits, completion_ids.to(logits.device))


class PolicyForward(nn.Module):
    """The module a GRPO step trains (DDP-wrapped by the worker's context)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor], prompt_length: int, completion_ids: torch.Tensor) -> torch.Tensor:
        return forward_completions(self.model, batch, prompt_length, completion_ids)


class Reference:
    """The frozen reference policy of the KL term (see the module docstring)."""

    def __init__(self, policy: nn.Module, mode: str, start: Any | None = None):
        """``policy``: the trained (HF or PEFT) model; ``start``: for full training, a callable that loads the
        stage's starting model (only called when needed)."""
        self.policy, self.mode = policy, mode
        self.model: nn.Module | None = None
        if mode == "lora":
            if not hasattr(policy, "disable_adapter"):
                raise ValueError("a LoRA reference needs a PEFT model (disable_adapter)")
        elif mode == "full":
            if start is None:
                raise ValueError("full training needs the starting model as the reference")
            self.model = start().eval().requires_grad_(False)
        else:
            raise ValueError(f"GRPO trains the policy with train.mode lora or full, not {mode!r}")

    @contextlib.contextmanager
    def _active(self) -> Iterator[nn.Module]:
        if self.model is not None:
            yield self.model
            return
        with self.policy.disable_adapter():
            yield self.policy

    @torch.no_grad()
    def logprobs(self, batch: dict[str, torch.Tensor], prompt_length: int, completion_ids: torch.Tensor) -> torch.Tensor:
        with self._active() as model:
            return forward_completions(model, batch, prompt_length, completion_ids)


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_rows(value: Any, rows: int) -> tuple[list[Any], int]:
    """All ranks' ``value`` (a per-row list or CPU tensor of ``rows`` rows) concatenated in rank order, and
    the row where this rank's rows start. One process: (``value`` as a list or tensor, 0)."""
    if _world() == 1:
        return value, 0
    parts: list[Any] = [None] * _world()
    dist.all_gather_object(parts, (rows, value))
    start = sum(n for n, _ in parts[:dist.get_rank()])
    values = [v for _, v in parts]
    if isinstance(value, torch.Tensor):
        return torch.cat(values), start
    return [x for v in values for x in v], start

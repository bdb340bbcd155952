"""AdamW with three parameter groups and a linear-warmup cosine schedule.

Groups: weight matrices (decayed), biases and norm weights (not decayed), the loss's learnable
temperatures (never decayed, optionally their own learning rate) and its other parameters (LSQ step
sizes: not decayed, the model's learning rate). Decaying a temperature's log
parameter would drag tau towards 1 (METHODS §12.4).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from omniret.losses import temperature_parameters


def param_groups(model: nn.Module, loss: nn.Module, lr: float, weight_decay: float,
                 temperature_lr: float | None = None) -> list[dict]:
    """Decayed matrices, undecayed vectors, and temperatures (lr ``temperature_lr`` or ``lr``)."""
    temps = temperature_parameters(loss)
    seen = {id(p) for p in temps}
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr": lr, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "lr": lr, "name": "no_decay"}]
    if temps:
        groups.append({"params": temps, "weight_decay": 0.0, "lr": temperature_lr or lr, "name": "temperature"})
    others = [p for p in loss.parameters() if p.requires_grad and id(p) not in seen]
    if others:
        groups.append({"params": others, "weight_decay": 0.0, "lr": lr, "name": "loss"})
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, loss: nn.Module, lr: float, weight_decay: float,
                    temperature_lr: float | None = None) -> torch.optim.AdamW:
    groups = param_groups(model, loss, lr, weight_decay, temperature_lr)
    if not groups:
        raise ValueError("nothing to train: no parameter requires a gradient")
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                  min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from ~0 over ``warmup_steps``, then cosine decay to ``min_lr_ratio`` at ``total_steps``."""
    total_steps = max(1, total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

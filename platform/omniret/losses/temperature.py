"""Temperature modules shared by the contrastive losses.

Every temperature module returns one temperature per query row, shape ``(B,)``, so a loss can always
divide its logit rows by ``tau[:, None]`` whatever the parameterisation:

- :class:`FixedTemperature`: a constant (VLM2Vec / LLaVE / QQMM / B3 use 0.02 on cosine, METHODS §0.2).
- :class:`LearnableTemperature`: one global ``tau = exp(theta)``.
- :class:`TaskTemperature`: RzenEmbed's per-task ``tau_t = exp(theta_t)`` (METHODS §1.2).

e5-omni's modality temperature lives in :mod:`omniret.losses.e5omni` and subclasses
:class:`TemperatureModule` too, so :func:`temperature_parameters` finds it.

Optimiser note: temperature parameters must be **excluded from weight decay** (decaying ``theta`` towards 0
drives tau towards 1, and a raw tau towards 0) and may want their own learning rate (METHODS §12.4). Use
:func:`temperature_parameters` to build that parameter group.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def check_positive(name: str, value: float) -> float:
    """Return ``value`` as a float, or raise ValueError when it is not a finite number > 0."""
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


class TemperatureModule(nn.Module):
    """Marker base class: every parameter of a subclass is a temperature parameter."""

    def forward(self, task_ids: Tensor | int | None, rows: int) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class FixedTemperature(TemperatureModule):
    """A constant temperature; stored as a buffer so it follows ``.to(device)`` but is never trained."""

    def __init__(self, value: float = 0.02):
        super().__init__()
        self.register_buffer("value", torch.tensor(check_positive("temperature", value), dtype=torch.float64))

    def forward(self, task_ids: Tensor | int | None = None, rows: int = 1) -> Tensor:
        return self.value.expand(rows)

    def extra_repr(self) -> str:
        return f"value={float(self.value):g}"


class LearnableTemperature(TemperatureModule):
    """One learnable global temperature ``tau = exp(theta)``, ``theta`` initialised at ``ln(init)``.

    The exp parameterisation keeps tau > 0 without clamping and makes the update scale-free.
    """

    def __init__(self, init: float = 0.02):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(math.log(check_positive("temperature init", init))))

    def forward(self, task_ids: Tensor | int | None = None, rows: int = 1) -> Tensor:
        return self.theta.exp().expand(rows)

    def extra_repr(self) -> str:
        return f"tau={float(self.theta.detach().exp()):.4g}"


class TaskTemperature(TemperatureModule):
    """RzenEmbed task-specific temperature: ``tau_t = exp(theta_t)`` for task ``t`` (arXiv 2510.27350 §3.4.3).

    ``num_tasks`` defaults to the paper's 7 task groups (image classification, image QA, image retrieval, image
    grounding, document retrieval, video retrieval, video QA). The paper does not state the initial value; we use
    ``theta_t = ln 0.02`` (the VLM2Vec default), as METHODS §1.2 suggests.

    ``task_ids`` is an int (the paper's single-dataset batches have one task) or a ``(B,)`` integer tensor of
    per-row ids; both give a ``(B,)`` temperature.
    """

    def __init__(self, num_tasks: int = 7, init: float = 0.02):
        super().__init__()
        if int(num_tasks) != num_tasks or num_tasks < 1:
            raise ValueError(f"num_tasks must be an integer >= 1, got {num_tasks!r}")
        self.num_tasks = int(num_tasks)
        theta0 = math.log(check_positive("temperature init", init))
        self.theta = nn.Parameter(torch.full((self.num_tasks,), theta0))

    def forward(self, task_ids: Tensor | int | None, rows: int) -> Tensor:
        ids = self._task_index(task_ids, rows)
        return self.theta.exp()[ids]

    def _task_index(self, task_ids: Tensor | int | None, rows: int) -> Tensor:
        device = self.theta.device
        if task_ids is None:
            if self.num_tasks == 1:
                return torch.zeros(rows, dtype=torch.long, device=device)
            raise ValueError(f"TaskTemperature has {self.num_tasks} tasks: pass task_ids (an int or a (B,) tensor)")
        ids = torch.as_tensor(task_ids, device=device)
        if ids.is_floating_point() or ids.is_complex():
            raise ValueError(f"task_ids must be integers, got dtype {ids.dtype}")
        ids = ids.long()
        if ids.dim() == 0:
            ids = ids.expand(rows)
        if ids.shape != (rows,):
            raise ValueError(f"task_ids must be an int or a tensor of shape ({rows},), got {tuple(ids.shape)}")
        if rows and (int(ids.min()) < 0 or int(ids.max()) >= self.num_tasks):
            raise ValueError(f"task_ids must lie in [0, {self.num_tasks}), got {ids.tolist()}")
        return ids

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}"


def make_temperature(temperature: float | TemperatureModule, learnable: bool = False) -> TemperatureModule:
    """A module from a float (fixed, or learnable with ``learnable=True``) or an existing module."""
    if isinstance(temperature, TemperatureModule):
        if learnable:
            raise ValueError("learn_temperature=True needs a float temperature, not a temperature module")
        return temperature
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(f"temperature must be a float or a TemperatureModule, got {type(temperature).__name__}")
    return LearnableTemperature(temperature) if learnable else FixedTemperature(temperature)


def temperature_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The trainable temperature parameters inside ``module`` (a loss, or a model holding one).

    Put them in their own optimizer group with ``weight_decay=0.0``; exclude them from the decayed group::

        temps = temperature_parameters(loss)
        ids = {id(p) for p in temps}
        groups = [{"params": [p for p in model.parameters() if id(p) not in ids]},
                  {"params": temps, "weight_decay": 0.0}]
    """
    seen: set[int] = set()
    params: list[nn.Parameter] = []
    for sub in module.modules():
        if not isinstance(sub, TemperatureModule):
            continue
        for p in sub.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params

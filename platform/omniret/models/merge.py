"""Model merging (Qwen3-VL-Embedding stage s3): merge checkpoints or LoRA adapters into one HF checkpoint.

Methods (``omniret.models.adapters.MERGE_METHODS``), applied per parameter tensor to task vectors
``t_k = theta_k - theta_base`` and added back to the base, ``theta = theta_base + merge(t_1..t_n)``:

- ``linear``: ``sum_k w_k t_k`` (with no base: the plain weighted sum ``sum_k w_k theta_k``, which is
  what merging s2 with s1 by interpolation needs; the two agree when the weights sum to 1);
- ``ties`` (Yadav et al. 2023): trim each task vector to its top ``density`` fraction by magnitude, elect
  the sign of the summed trimmed values, then the weighted mean of the entries that agree with it;
- ``dare_linear`` / ``dare_ties`` (Yu et al. 2024): drop entries with probability ``p = 1 - density``,
  rescale the survivors by ``1 / (1 - p)``, then linear / TIES. ``seed`` fixes the drop masks.

The arithmetic is peft's ``merge_utils`` (the functions its ``add_weighted_adapter`` uses), called through
models/adapters.py. ``add_weighted_adapter`` itself is not used: its linear, TIES and DARE variants
combine the A and B factors of the adapters separately, which is neither the weighted sum of the deltas
``B A`` (the product of sums is not the sum of products) nor TIES/DARE on the task vector the papers
define; its SVD variants do act on ``B A`` but truncate the result back to a rank. Here adapters are
materialised as deltas ``s * B A``, merged exactly and folded into the base, so the output is always a full
checkpoint (loads with ``model.path``). Full checkpoints have no library merge in the dependencies
(mergekit would pull its own torch and transformers pins), so the loop over tensors is here.

TIES trims per tensor, as mergekit and peft do; the paper's code trims over the whole flattened task
vector. Weights default to ``1/n`` for linear and DARE-linear and to 1 (the paper's lambda) for the TIES
variants, so merging a model with itself returns it unchanged. Checkpoints of different architectures
(config.json ``architectures`` / ``model_type``) or with different parameter names or shapes are
refused, naming both sides. Merging loads every model in float32 in memory.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from omniret.errors import OmniretError
from omniret.models.adapters import MERGE_METHODS, SIDE_FILES, adapter_deltas, merge_task_tensors

log = logging.getLogger(__name__)


class MergeError(OmniretError, ValueError):
    """Checkpoints or adapters that cannot be merged, with the reason."""


def default_weights(method: str, n: int) -> list[float]:
    return [1.0] * n if method in ("ties", "dare_ties") else [1.0 / n] * n


def architecture(path: str | Path) -> str:
    """``architectures[0]`` (else ``model_type``) of a checkpoint's config.json."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: is {path} a HF checkpoint directory?")
    config = json.loads(file.read_text())
    names = config.get("architectures") or [config.get("model_type") or "unknown"]
    return str(names[0])


def check_same_architecture(paths: Sequence[str | Path]) -> str:
    names = [architecture(p) for p in paths]
    for path, name in zip(paths, names, strict=True):
        if name != names[0]:
            raise MergeError(f"cannot merge checkpoints of different architectures: {paths[0]} is {names[0]}, "
                             f"{path} is {name}")
    return names[0]


def merge_state_dicts(states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float] | None = None,
                      method: str = "linear", base: dict[str, torch.Tensor] | None = None, *,
                      density: float = 1.0, majority_sign: str = "total", seed: int = 0) -> dict[str, torch.Tensor]:
    """Merge state dicts tensor by tensor (module docstring); TIES and DARE need ``base``."""
    if method not in MERGE_METHODS:
        raise MergeError(f"unknown merge method {method!r}; choose one of {', '.join(MERGE_METHODS)}")
    if not states:
        raise MergeError("nothing to merge")
    weights = default_weights(method, len(states)) if weights is None else [float(w) for w in weights]
    if len(weights) != len(states):
        raise MergeError(f"{len(weights)} weights for {len(states)} models")
    if not 0 < density <= 1:
        raise MergeError(f"density must lie in (0, 1], got {density}")
    if base is None and method != "linear":
        raise MergeError(f"{method} merges task vectors: it needs a base model (the models' common ancestor)")
    reference = base if base is not None else states[0]
    for i, state in enumerate(states):
        if set(state) != set(reference):
            extra = sorted(set(state) ^ set(reference))[:3]
            raise MergeError(f"model {i} has different parameters from the {'base' if base else 'first'}: {extra}")
    merged = {}
    for index, key in enumerate(sorted(reference)):
        ref = reference[key]
        for i, state in enumerate(states):
            if state[key].shape != ref.shape:
                raise MergeError(f"{key}: shape {tuple(state[key].shape)} of model {i} differs from "
                                 f"{tuple(ref.shape)}")
        if not ref.is_floating_point():  # integer buffers (position ids): must agree, copied as they are
            if any(not torch.equal(state[key], ref) for state in states):
                raise MergeError(f"{key}: non-float tensor differs between the models")
            merged[key] = ref.clone()
            continue
        origin = base[key].float() if base is not None else torch.zeros_like(ref, dtype=torch.float32)
        vectors = [state[key].float() - origin for state in states]
        delta = merge_task_tensors(method, vectors, weights, density=density, majority_sign=majority_sign,
                                   seed=seed + index)
        merged[key] = (origin + delta).to(ref.dtype)
    return merged


def _load(path: str | Path) -> torch.nn.Module:
    from omniret.models.families import detect_family

    return detect_family(path).model_class().from_pretrained(str(path), dtype=torch.float32)


def _save(model: torch.nn.Module, state: dict[str, torch.Tensor], like: Path, out: Path) -> Path:
    model.load_state_dict(state, strict=True)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    for name in SIDE_FILES:
        if (like / name).is_file():
            shutil.copy2(like / name, out / name)
    return out


def merge_checkpoints(checkpoints: Sequence[str | Path], out: str | Path, *, method: str = "linear",
                      weights: Sequence[float] | None = None, base: str | Path | None = None,
                      density: float = 1.0, majority_sign: str = "total", seed: int = 0) -> Path:
    """Merge full HF checkpoints (same architecture) into ``out`` (safetensors, loads with ``model.path``)."""
    paths = [Path(p) for p in checkpoints]
    if len(paths) < 2 and base is None:
        raise MergeError("merging needs two checkpoints, or one and a base")
    check_same_architecture([*paths, *([Path(base)] if base else [])])
    models = [_load(p) for p in paths]
    states = [{k: v.detach() for k, v in m.state_dict().items()} for m in models]
    base_state = {k: v.detach() for k, v in _load(base).state_dict().items()} if base else None
    merged = merge_state_dicts(states, weights, method, base_state, density=density, majority_sign=majority_sign,
                               seed=seed)
    out = _save(models[0], merged, paths[0], Path(out))
    log.info("merged %d checkpoints (%s, weights %s) into %s", len(paths), method, weights, out)
    return out


def merge_adapters(base: str | Path, adapters: Sequence[str | Path], out: str | Path, *, method: str = "linear",
                   weights: Sequence[float] | None = None, density: float = 1.0, majority_sign: str = "total",
                   seed: int = 0) -> Path:
    """Merge LoRA adapters of one base checkpoint: their deltas ``s * B A`` are the task vectors."""
    if not adapters:
        raise MergeError("no adapters to merge")
    base = Path(base)
    model, deltas = adapter_deltas(_load(base), adapters)
    params = {k: v.detach() for k, v in model.state_dict().items()}
    keys = sorted(set().union(*deltas))
    missing = [k for k in keys if k not in params]
    if missing:
        raise MergeError(f"adapter layers not found in the base model {base}: {missing[:5]}")
    # Task vectors over the adapted tensors only: a layer one adapter does not touch has a zero delta there.
    vectors = [{k: d.get(k, torch.zeros_like(params[k], dtype=torch.float32)).float() for k in keys} for d in deltas]
    zero = {k: torch.zeros_like(params[k], dtype=torch.float32) for k in keys}
    merged_delta = merge_state_dicts(vectors, weights, method, zero, density=density, majority_sign=majority_sign,
                                     seed=seed)
    state = dict(params)
    for key, delta in merged_delta.items():
        state[key] = (params[key].float() + delta).to(params[key].dtype)
    out = _save(model, state, base, Path(out))
    log.info("merged %d adapters (%s, weights %s) into %s", len(adapters), method, weights, out)
    return out


def merge_from_config(cfg) -> Path:
    """Run the merge a :class:`~omniret.config.OmniretConfig`'s ``merge`` section describes (a recipe stage);
    adapters merge on ``merge.base`` or else ``model.path`` (the tiny model when unset)."""
    from omniret.models.backbone import checkpoint_path

    m = cfg.merge
    if not m.out:
        raise MergeError("merge.out: where to write the merged checkpoint")
    if bool(m.checkpoints) == bool(m.adapters):
        raise MergeError("merge: give merge.checkpoints or merge.adapters (not both)")
    options = {"method": m.method, "weights": m.weights, "density": m.density, "seed": m.seed}
    if m.checkpoints:
        return merge_checkpoints(m.checkpoints, m.out, base=m.base, **options)
    return merge_adapters(m.base or checkpoint_path(cfg.model), m.adapters, m.out, **options)

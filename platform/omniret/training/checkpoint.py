"""Training checkpoints: a model folder that loads as it is, plus everything needed to resume.

``checkpoint_<step>/`` holds

- full training: an HF checkpoint (config.json, model.safetensors, tokenizer and preprocessor files),
  loaded with ``model.path=<folder>``;
- LoRA training: a PEFT adapter (adapter_config.json, adapter_model.safetensors), loaded with
  ``model.path=<base> model.adapter=<folder>``; ``omniret_checkpoint.json`` names the base;
- head training (TTE_u): the embedding head (omniret_head.safetensors, omniret_head.json), loaded with
  ``model.path=<base> model.head=<folder>``;
- ``training_state/``: state.json (step, sampler position and probabilities, metrics), the
  optimizer, scheduler and loss (learnable temperatures) states, and ``rng_rank<r>.pt`` with every
  rank's Python / NumPy / torch (and CUDA) generators. Each rank writes its own RNG file; Ray Train
  merges the ranks' folders into one checkpoint.

Nothing is unpickled on load: every ``.pt`` file holds only tensors, numbers, strings and
containers of them, and is read with ``torch.load(weights_only=True)``, so a checkpoint from an
untrusted place cannot run code. The generators' states are stored in that form too (the NumPy key
as an int64 tensor, the Python state as a list of ints).

:func:`export_final` writes a stage's output for the next stage: the full model (LoRA merged in)
with the adapter kept under ``adapter/`` for soups; for a head, the base checkpoint with the head beside it.
"""

from __future__ import annotations

import json
import logging
import pickle
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from omniret.models.adapters import SIDE_FILES
from omniret.models.backbone import unwrap
from omniret.models.head import HEAD_CONFIG, HEAD_WEIGHTS, EmbeddingHead
from omniret.models.pooling import POOLING_FILE
from omniret.models.rematch import REMATCH_CONFIG, REMATCH_WEIGHTS
from omniret.progress import duration

log = logging.getLogger(__name__)

STATE_DIR = "training_state"
INFO_FILE = "omniret_checkpoint.json"


def save_model(folder: str | Path, model: nn.Module, mode: str, base_dir: str | Path,
               head: EmbeddingHead | None = None) -> None:
    """The trained weights in a loadable form: an HF checkpoint (full), a PEFT adapter (lora) or the
    embedding head alone (head: the backbone is the unchanged base)."""
    folder, base_dir = Path(folder), Path(base_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if mode == "head":
        if head is None:
            raise ValueError("train.mode=head but the model has no embedding head")
        head.save(folder)
    elif mode == "lora":
        model.save_pretrained(str(folder), safe_serialization=True)
    else:
        unwrap(model).save_pretrained(folder, safe_serialization=True)
        copy_side_files(base_dir, folder)


def copy_side_files(source: Path, folder: Path) -> None:
    """Tokenizer, preprocessor and template files that make a weights folder a usable checkpoint."""
    for name in SIDE_FILES:
        if (source / name).is_file() and not (folder / name).exists():
            shutil.copy2(source / name, folder / name)


def save_training_state(folder: str | Path, *, state: dict[str, Any], optimizer: torch.optim.Optimizer,
                        scheduler: Any, loss: nn.Module, info: dict[str, Any]) -> None:
    """Rank 0's share: state.json, optimizer / scheduler / loss states and the checkpoint description."""
    folder = Path(folder)
    target = folder / STATE_DIR
    target.mkdir(parents=True, exist_ok=True)
    torch.save(optimizer.state_dict(), target / "optimizer.pt")
    torch.save(scheduler.state_dict(), target / "scheduler.pt")
    torch.save(loss.state_dict(), target / "loss.pt")
    (target / "state.json").write_text(json.dumps(state, indent=2))
    (folder / INFO_FILE).write_text(json.dumps(info, indent=2))


def save_rng(folder: str | Path, rank: int) -> None:
    target = Path(folder) / STATE_DIR
    target.mkdir(parents=True, exist_ok=True)
    torch.save({"python": python_rng_state(), "numpy": numpy_rng_state(), "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
               target / f"rng_rank{rank}.pt")


def python_rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    return {"version": version, "state": list(internal), "gauss": gauss}


def numpy_rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def load_rng(folder: str | Path, rank: int) -> bool:
    """Restore this rank's generators; False (generators untouched) when the file is missing or
    cannot be read without unpickling (an RNG file written by an older version)."""
    path = Path(folder) / STATE_DIR / f"rng_rank{rank}.pt"
    if not path.is_file():
        log.warning("no RNG state for rank %d in %s; generators are not restored", rank, folder)
        return False
    try:
        saved = torch.load(path, weights_only=True)
    except pickle.UnpicklingError as exc:
        log.warning("RNG state %s holds objects other than tensors and numbers (%s); it is not loaded and "
                    "the generators are not restored", path, str(exc).splitlines()[0])
        return False
    py = saved["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = saved["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(saved["torch"])
    if saved["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda"])
    return True


def read_state(folder: str | Path) -> dict[str, Any]:
    return json.loads((Path(folder) / STATE_DIR / "state.json").read_text())


def load_training_state(folder: str | Path, optimizer: torch.optim.Optimizer, scheduler: Any,
                        loss: nn.Module) -> dict[str, Any]:
    """Restore optimizer, scheduler and loss from ``folder``; returns state.json."""
    target = Path(folder) / STATE_DIR
    optimizer.load_state_dict(torch.load(target / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(target / "scheduler.pt", weights_only=True))
    loss.load_state_dict(torch.load(target / "loss.pt", weights_only=True))
    return read_state(folder)


def describe(folder: str | Path) -> dict[str, Any]:
    """The checkpoint's description (mode, base model, step)."""
    return json.loads((Path(folder) / INFO_FILE).read_text())


def load_overrides(folder: str | Path, section: str = "model") -> list[str]:
    """Config overrides that load this checkpoint as ``section`` (``model``: the embedder; ``rerank.model``:
    the reranker)."""
    folder = Path(folder).resolve()
    info = describe(folder)
    if info["mode"] == "lora":
        return [f"{section}.path={info['base']}", f"{section}.adapter={folder}"]
    if info["mode"] == "head":
        return [f"{section}.path={info['base']}", f"{section}.head={folder}"]
    return [f"{section}.path={folder}"]


def stored_dtype(model_dir: str | Path) -> torch.dtype:
    """The dtype a checkpoint's weights are stored in (config.json ``dtype`` / ``torch_dtype``; fp32 if absent)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"{model_dir}/config.json names an unknown dtype {name!r}")
    return dtype


def export_final(checkpoint: str | Path, out: str | Path) -> Path:
    """A stage's output from its last checkpoint: a full HF checkpoint (LoRA merged, adapter in adapter/)."""
    from omniret.models.adapters import load_adapter, merge
    from omniret.models.families import detect_family

    checkpoint, out = Path(checkpoint), Path(out)
    info = describe(checkpoint)
    started = time.monotonic()
    log.info("exporting %s to %s (%s) ...", checkpoint.name, out,
             "loading the base model, merging the adapter, saving" if info["mode"] == "lora" else "copying")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if info["mode"] == "lora":
        base = Path(info["base"])
        # Merge in fp32, then cast to the base's stored dtype: W0 + s*B@A rounded once, not in every
        # bf16 operation of the merge (a bf16 add loses most of a small LoRA delta).
        model = detect_family(base).model_class().from_pretrained(base, dtype=torch.float32)
        merged = merge(load_adapter(model, checkpoint)).to(stored_dtype(base))
        merged.save_pretrained(tmp, safe_serialization=True)
        copy_side_files(checkpoint, tmp)  # the checkpoint's own records (pooling) before the base's
        copy_side_files(base, tmp)
        for name in (REMATCH_WEIGHTS, REMATCH_CONFIG):  # ReMatch tokens trained with the adapter
            if (checkpoint / name).is_file():
                shutil.copy2(checkpoint / name, tmp / name)
        shutil.copytree(checkpoint, tmp / "adapter", ignore=shutil.ignore_patterns(STATE_DIR))
    elif info["mode"] == "head":  # the unchanged base, with this head (and its pooling record) beside it
        shutil.copytree(Path(info["base"]), tmp, ignore=shutil.ignore_patterns(STATE_DIR))
        for name in (HEAD_WEIGHTS, HEAD_CONFIG, POOLING_FILE):
            if (checkpoint / name).is_file():
                shutil.copy2(checkpoint / name, tmp / name)
    else:
        shutil.copytree(checkpoint, tmp, ignore=shutil.ignore_patterns(STATE_DIR))
    (tmp / INFO_FILE).write_text(json.dumps({**info, "mode": "full", "trained_as": info["mode"],
                                             "from_checkpoint": str(checkpoint)}, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log.info("exported %s in %s", out, duration(time.monotonic() - started))
    return out

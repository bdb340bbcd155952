"""ReMatch's learnable embedding tokens (METHODS §6.1) and the latent slots of its matching prompts (§6.2).

:class:`ReMatchTokens` holds K learnable input vectors (a K x H parameter, not vocabulary rows) and the
MLP that maps a fused embedding back into the LLM's input space. The K vectors are appended to every
input right after its last attended token (after the assistant header of the embedding template; the
paper only says "appended"), their last-layer states e_1..e_K are read out, and the fused embedding is
E* = mean(e_1..e_K) (unnormalised; callers normalise it for retrieval).

Any input-space vector reaches the model the same way: the sequence holds a placeholder id at that
position and a forward hook on the input-embedding module swaps the looked-up row for the vector
(:func:`substituted`). Visual placeholders, M-RoPE position ids and LoRA all stay exactly as for a
plain input, because the backbone's own forward runs unchanged.

The tokens travel with a checkpoint as ``omniret_rematch.safetensors`` (tokens and MLP) and
``omniret_rematch.json`` (K, hidden size, MLP width); :func:`saved_rematch` finds them in a folder, like
the TTE_u head (:mod:`omniret.models.head`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from omniret.models.pooling import first_holding, last_token_index

REMATCH_WEIGHTS = "omniret_rematch.safetensors"
REMATCH_CONFIG = "omniret_rematch.json"


def input_embeddings(model: nn.Module) -> nn.Module:
    """The token-embedding module of a Qwen-VL model, PEFT-wrapped or not."""
    from omniret.models.backbone import core_model

    return core_model(model).get_input_embeddings()


@contextlib.contextmanager
def substituted(model: nn.Module, slots: torch.Tensor, values: torch.Tensor) -> Iterator[None]:
    """Within the block, positions ``slots`` (B, L) bool of the next inputs embed as ``values`` (n, H), in
    row-major order of the True positions, instead of their token's row (gradients reach ``values``)."""
    if int(slots.sum()) != values.shape[0]:
        raise ValueError(f"{int(slots.sum())} slots but {values.shape[0]} vectors to put in them")

    def hook(_module, _args, out):
        if out.shape[:2] != slots.shape:  # another lookup (not the batch's): leave it alone
            return out
        mask = slots.to(out.device)[..., None].expand_as(out)
        return out.masked_scatter(mask, values.to(device=out.device, dtype=out.dtype))

    handle = input_embeddings(model).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def append_slots(batch: dict[str, torch.Tensor], k: int, fill_id: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``batch`` with ``k`` attended positions inserted after each row's last attended token, and their mask.

    Left padding appends them at the end; right padding inserts them before the row's padding, which moves
    right by ``k``. The new positions hold ``fill_id`` (text type), to be swapped by :func:`substituted`.
    """
    ids, mask = batch["input_ids"], batch["attention_mask"]
    rows, length = ids.shape
    last = last_token_index(mask)
    cols = torch.arange(length, device=ids.device)
    dest = cols[None, :] + k * (cols[None, :] > last[:, None])  # where each old column goes
    slot_cols = last[:, None] + 1 + torch.arange(k, device=ids.device)[None, :]
    out = dict(batch)
    for key, fill in (("input_ids", fill_id), ("attention_mask", 1), ("mm_token_type_ids", 0)):
        if key not in batch:
            continue
        old = batch[key]
        new = torch.full((rows, length + k), fill, dtype=old.dtype, device=old.device)
        new.scatter_(1, dest, old)
        new.scatter_(1, slot_cols, torch.full_like(slot_cols, fill, dtype=old.dtype))
        out[key] = new
    slots = torch.zeros((rows, length + k), dtype=torch.bool, device=ids.device)
    slots.scatter_(1, slot_cols, True)
    return out, slots


class ReMatchTokens(nn.Module):
    """K learnable input vectors and the MLP E* -> input space (``projector``, used in training only)."""

    def __init__(self, k: int, hidden: int, mlp_hidden: int | None = None):
        super().__init__()
        if k < 1:
            raise ValueError(f"ReMatch needs at least one learnable token, got {k}")
        self.k, self.hidden, self.mlp_hidden = k, hidden, mlp_hidden or hidden
        self.tokens = nn.Parameter(torch.zeros(k, hidden))
        # Two layers with a GELU: the paper names "an MLP" without its shape (METHODS §13); ours.
        self.projector = nn.Sequential(nn.Linear(hidden, self.mlp_hidden), nn.GELU(),
                                       nn.Linear(self.mlp_hidden, hidden))

    @classmethod
    def create(cls, model: nn.Module, k: int, mlp_hidden: int | None = None, seed: int = 0) -> ReMatchTokens:
        """New tokens drawn around the vocabulary's rows: mean row + N(0, per-dim std), seeded.

        The paper does not say how the tokens start (our choice): distinct draws give L_orth something to
        separate, and rows of the embedding matrix's scale keep the first forward in distribution.
        """
        weight = input_embeddings(model).weight.detach().float()
        out = cls(k, weight.shape[1], mlp_hidden)
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(k, weight.shape[1], generator=gen)
        with torch.no_grad():
            out.tokens.copy_(weight.mean(0) + noise * weight.std(0))
            for layer in (out.projector[0], out.projector[2]):  # seeded too: runs repeat exactly
                nn.init.normal_(layer.weight, std=layer.in_features ** -0.5, generator=gen)
                nn.init.zeros_(layer.bias)
        return out.to(next(model.parameters()).device)

    def states(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, K, H) last-layer states of the K tokens appended to each row of a collated ``batch``."""
        from omniret.models.backbone import forward_hidden

        extended, slots = append_slots(batch, self.k, _fill_id(batch))
        values = self.tokens[None].expand(slots.shape[0], -1, -1).reshape(-1, self.hidden)
        with substituted(model, slots, values):
            hidden = forward_hidden(model, extended)
        return hidden[slots.to(hidden.device)].view(slots.shape[0], self.k, -1)

    @staticmethod
    def fuse(states: torch.Tensor) -> torch.Tensor:
        """E* = (1/K) sum_i e_i: (..., K, H) -> (..., H), unnormalised."""
        return states.mean(dim=-2)

    def project(self, fused: torch.Tensor) -> torch.Tensor:
        """Z = MLP(E*): a fused embedding mapped back into the LLM's input space."""
        return self.projector(fused.to(self.tokens.dtype))

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, folder / REMATCH_WEIGHTS)
        (folder / REMATCH_CONFIG).write_text(json.dumps({"kind": "rematch", "tokens": self.k, "hidden": self.hidden,
                                                         "mlp_hidden": self.mlp_hidden}))


def _fill_id(batch: dict[str, torch.Tensor]) -> int:
    """The placeholder id: any text id serves (its row is swapped); the first row's last attended token,
    which every template makes a text token."""
    return int(batch["input_ids"][0, last_token_index(batch["attention_mask"])[0]])


def saved_rematch(*folders: str | Path | None) -> Path | None:
    """The first of ``folders`` that holds saved ReMatch tokens."""
    return first_holding(REMATCH_CONFIG, *folders)


def load_rematch(folder: str | Path, model: nn.Module) -> ReMatchTokens:
    """Saved tokens (and MLP) for ``model``; refused when they were trained on another hidden size."""
    folder = Path(folder)
    config = json.loads((folder / REMATCH_CONFIG).read_text())
    if config.get("kind") != "rematch":
        raise ValueError(f"{folder / REMATCH_CONFIG} does not describe ReMatch tokens ({config.get('kind')!r})")
    hidden = input_embeddings(model).weight.shape[1]
    if int(config["hidden"]) != hidden:
        raise ValueError(f"ReMatch tokens in {folder} have hidden size {config['hidden']}, but this model's is "
                         f"{hidden}: they were trained on another model")
    tokens = ReMatchTokens(int(config["tokens"]), hidden, int(config["mlp_hidden"]))
    tokens.load_state_dict(load_file(folder / REMATCH_WEIGHTS))  # strict: every weight present, no extra
    tokens.requires_grad_(False)
    return tokens.to(next(model.parameters()).device)

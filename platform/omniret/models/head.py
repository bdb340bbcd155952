"""TTE_u embedding head (METHODS §7.2): a copy of the backbone's last ``n`` decoder layers and final norm.

The head is fed the hidden states that enter the backbone's layer ``L-n`` (0-based; the paper's "layer
L-n" output), runs its own copies of layers ``L-n .. L-1`` and of the final norm, and the embedder pools
its output (last token). Before training the head is the backbone's own top, so it embeds exactly as
the full model does; training then changes only the head while the backbone stays frozen.

The layers are called exactly as the backbone calls its own: a forward pre-hook on backbone layer
``L-n`` captures the hidden states entering it together with the keyword arguments the text model
passes (causal mask, rotary ``position_embeddings``, text position ids), so padding side, M-RoPE of
visual tokens and Qwen3-VL's deepstack additions (made before that layer) are all as in the full
model. The hook then stops the backbone's forward: its top ``n`` layers would be computed for nothing.

A head travels with a checkpoint as ``omniret_head.safetensors`` (the weights) and ``omniret_head.json``
(layer count and where it is fed from); :func:`saved_head` finds it in a folder, like the pooling record.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from omniret.models.pooling import first_holding

HEAD_WEIGHTS = "omniret_head.safetensors"
HEAD_CONFIG = "omniret_head.json"


class _Captured(Exception):  # a control-flow signal, not an error
    """Raised by the pre-hook once the head's input is captured, to end the backbone's forward early."""


def text_model(model: nn.Module) -> nn.Module:
    """The language model (layers, norm) of a Qwen-VL model, PEFT-wrapped or not."""
    from omniret.models.backbone import core_model

    return core_model(model).language_model


class EmbeddingHead(nn.Module):
    """``n`` decoder layers and a final norm, initialised from (and shaped like) the backbone's top."""

    def __init__(self, layers: list[nn.Module], norm: nn.Module, first: int, layer_types: list[str]):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm
        self.first = first  # the backbone layer whose input feeds the head
        self.layer_types = layer_types

    @classmethod
    def from_backbone(cls, model: nn.Module, n: int) -> EmbeddingHead:
        """Deep copies of the backbone's last ``n`` layers and final norm (trainable)."""
        lm = text_model(model)
        total = len(lm.layers)
        if not 1 <= n <= total:
            raise ValueError(f"an embedding head needs 1..{total} layers of this backbone, got {n}")
        first = total - n
        _check_feed(model, first)
        head = cls([copy.deepcopy(layer) for layer in lm.layers[first:]], copy.deepcopy(lm.norm), first,
                   _layer_types(lm)[first:])
        for param in head.parameters():
            param.requires_grad_(True)
        return head

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, L, H) hidden states of the head on a collated batch (the backbone runs up to layer ``first``)."""
        from omniret.models.backbone import forward_hidden

        feed = text_model(model).layers[self.first]
        captured: dict = {}

        def grab(_module, args, kwargs):
            captured["hidden"], captured["kwargs"] = args[0], kwargs
            raise _Captured

        handle = feed.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            with torch.no_grad():  # the backbone is frozen: its activations need no graph
                forward_hidden(model, batch)
        except _Captured:
            pass
        finally:
            handle.remove()
        hidden, kwargs = captured["hidden"], captured["kwargs"]
        for layer in self.layers:
            hidden = layer(hidden, **kwargs)
        return self.norm(hidden)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, folder / HEAD_WEIGHTS)
        (folder / HEAD_CONFIG).write_text(json.dumps({"kind": "tte_u", "layers": len(self.layers),
                                                      "first": self.first}))


def _check_feed(model: nn.Module, first: int) -> None:
    """Refuse heads whose layers the backbone would call differently from layer ``first``."""
    lm = text_model(model)
    types = set(_layer_types(lm)[first:])
    if len(types) > 1:
        raise ValueError(f"the head's layers mix attention types {sorted(types)}; one mask is passed to them all")
    vision = getattr(getattr(model, "config", None), "vision_config", None)
    deepstack = len(getattr(vision, "deepstack_visual_indexes", None) or [])
    if first < deepstack:
        raise ValueError(f"an embedding head must start after the {deepstack} deepstack layers (it starts at "
                         f"layer {first}); use fewer head layers")


def _layer_types(lm: nn.Module) -> list[str]:
    return list(getattr(lm.config, "layer_types", None) or ["full_attention"] * len(lm.layers))


def saved_head(*folders: str | Path | None) -> Path | None:
    """The first of ``folders`` that holds a saved head."""
    return first_holding(HEAD_CONFIG, *folders)


def load_head(folder: str | Path, model: nn.Module) -> EmbeddingHead:
    """A saved head, built on ``model``'s layers (for their classes and shapes) then given its weights."""
    folder = Path(folder)
    config = json.loads((folder / HEAD_CONFIG).read_text())
    if config.get("kind") != "tte_u":
        raise ValueError(f"{folder / HEAD_CONFIG} is not a TTE_u head ({config.get('kind')!r})")
    head = EmbeddingHead.from_backbone(model, int(config["layers"]))
    if head.first != config["first"]:
        raise ValueError(f"head in {folder} is fed from layer {config['first']}, but this backbone would feed it "
                         f"from layer {head.first}: it was trained on another model")
    head.load_state_dict(load_file(folder / HEAD_WEIGHTS))  # strict: every weight present, no extra
    for param in head.parameters():
        param.requires_grad_(False)
    return head

"""``/v1/embeddings`` with ``mode`` (``disc``, ``gen`` or ``auto``): a UME-R1 checkpoint's embedding modes.

The embedder replica of a checkpoint that has ``<disc_emb>`` / ``<gen_emb>`` builds :class:`UmeModes` on
the backbone it already loaded (no second copy of the weights): one
:class:`~omniret.models.generative.UmeModeEmbedder` per mode, run through the same per-request
isolation as ordinary embedding (:func:`~omniret.serving.backend.embed_jobs`). A request without
``mode`` is embedded as before (the configured template and pooling). A request with ``mode`` to a
checkpoint without the tokens is refused by the ingress with a 400 naming ``mode``. Generation is
greedy with at most ``ume.max_new_tokens`` new tokens; mode requests are not merged by ``@serve.batch``
(a generation batch is as slow as its longest completion).
"""

from __future__ import annotations

from omniret.config import OmniretConfig
from omniret.items import Item
from omniret.serving.api import InputError
from omniret.serving.backend import Outcome, embed_jobs


class UmeModes:
    """The three UME-R1 modes of one loaded checkpoint."""

    def __init__(self, view, cfg: OmniretConfig, model_id: str):
        from omniret.models.generative import MODES, UmeModeEmbedder

        self.embedders = {m: UmeModeEmbedder(view, m, cfg.ume.max_new_tokens, model_id) for m in MODES}
        self.budget = cfg.serve.max_batch_pixels

    def embed(self, items: list[Item], dimensions: int | None, mode: str, cost: int = 0) -> Outcome:
        return embed_jobs(self.embedders[mode], [(items, dimensions, cost)], self.budget)[0]


def ume_modes(embedder, cfg: OmniretConfig) -> UmeModes | None:
    """The modes of ``embedder``'s checkpoint, or None when it has no UME-R1 tokens."""
    from omniret.models.generative import GenerativeEmbedder, has_embedding_tokens

    backbone = embedder.backbone
    if not has_embedding_tokens(backbone.tokenizer):
        return None
    view = GenerativeEmbedder(backbone, cfg.media, cfg.model.max_length, cfg.ume.batch_size)
    return UmeModes(view, cfg, embedder.model_id)


def check_mode(backend, mode: str | None) -> None:
    """Refuse ``mode`` (400 naming the field) when the served checkpoint has no UME-R1 tokens."""
    if mode is not None and not getattr(backend, "ume_modes", False):
        raise InputError("mode", f"mode {mode!r} needs a UME-R1 checkpoint (with <disc_emb> and <gen_emb>); "
                                 "the served model has no such tokens: leave mode out")

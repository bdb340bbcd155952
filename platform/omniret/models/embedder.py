"""The embedder: items -> L2-normalised vectors (last-token or mean pooling, Matryoshka truncation).

``encode`` is the inference entry point (token-budget batches, progress bar, numpy out);
``forward`` is the differentiable path that training (GradCache) calls on a collated batch.
A model with ReMatch tokens (omniret.models.rematch) embeds as E*, the mean of the K token states;
``embed_multi`` returns the K states themselves (N, K, D), each L2-normalised, for multi-vector indexes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from omniret.config import EmbedConfig, MediaConfig, OmniretConfig
from omniret.errors import MediaError
from omniret.items import Item, as_item
from omniret.models.backbone import Backbone, forward_hidden, load_backbone, model_tag
from omniret.models.batching import plan_batches
from omniret.models.encoding import Encoded
from omniret.models.head import EmbeddingHead
from omniret.models.multivector import token_states
from omniret.models.pooling import matryoshka, normalize, pool
from omniret.models.prompts import get_template
from omniret.models.reasoned import ReasoningEncoder
from omniret.models.rematch import ReMatchTokens

log = logging.getLogger(__name__)


class EmbeddingModel(nn.Module):
    """``nn.Module`` view of the embedding computation, so DDP and GradCache can wrap and drive it.

    forward(collated batch) -> (B, H) unit vectors: ``pooling`` (last token or mean) of the last hidden states,
    those of the TTE_u embedding ``head`` when there is one (omniret.models.head); with ReMatch tokens
    (``rematch``) the normalised mean of their K last-layer states instead (``pooling`` does not apply).
    """

    def __init__(self, model: nn.Module, pooling: str = "last", head: EmbeddingHead | None = None,
                 rematch: ReMatchTokens | None = None):
        super().__init__()
        if head is not None and rematch is not None:
            raise ValueError("an embedding head and ReMatch tokens are two read-outs; use one")
        self.model = model
        self.pooling = pooling
        self.head = head
        self.rematch = rematch

    def token_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, K, H) unnormalised last-layer states of the ReMatch tokens."""
        if self.rematch is None:
            raise ValueError("this model has no ReMatch tokens: it embeds one vector per item")
        return self.rematch.states(self.model, batch)

    def hidden(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, L, H) last hidden states: the head's when there is one."""
        return self.head(self.model, batch) if self.head is not None else forward_hidden(self.model, batch)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.rematch is not None:
            return normalize(ReMatchTokens.fuse(self.token_states(batch).float()))
        hidden = self.hidden(batch)
        pooled = pool(hidden, batch["attention_mask"].to(hidden.device), self.pooling)
        return normalize(pooled.float())

    def multivector(self, batch: dict[str, torch.Tensor], k: int, source: str) -> torch.Tensor:
        """(B, 1 + K, H) unit vectors of one forward pass: the pooled vector, then the K token
        states of ``source`` (omniret.models.multivector); ``rematch``: E* and ReMatch's K token states."""
        if source == "rematch":
            states = self.token_states(batch).float()
            if states.shape[1] != k:
                raise ValueError(f"index.multivector_k is {k} but the model has {states.shape[1]} ReMatch tokens")
            return normalize(torch.cat([ReMatchTokens.fuse(states)[:, None], states], dim=1))
        hidden = self.hidden(batch)
        mask = batch["attention_mask"].to(hidden.device)
        fused = pool(hidden, mask, self.pooling).float()[:, None]
        return normalize(torch.cat([fused, token_states(hidden, mask, k, source)], dim=1))


class Embedder:
    def __init__(self, backbone: Backbone, media: MediaConfig | None = None, embed: EmbedConfig | None = None,
                 template: str = "qwen3_vl_embedding", max_length: int = 8192, model_id: str | None = None):
        self.backbone = backbone
        # The public name of the vectors (models.backbone.model_tag); the folder name when built by hand.
        self.model_id = model_id or backbone.path.name
        self.embed_cfg = embed or EmbedConfig()
        self.template = get_template(template)
        self.encoder = ReasoningEncoder(backbone.tokenizer, backbone.family, backbone.spec, media or MediaConfig(),
                                        self.template, max_length)
        self.network = EmbeddingModel(backbone.model, backbone.pooling, backbone.head, backbone.rematch)

    @classmethod
    def from_config(cls, cfg: OmniretConfig) -> Embedder:
        return cls(load_backbone(cfg.model), cfg.media, cfg.embed, cfg.model.template, cfg.model.max_length,
                   model_tag(cfg.model, cfg.embed.dimensions))

    @property
    def dim(self) -> int:
        return self.backbone.model.config.text_config.hidden_size

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Collated batch -> (B, H) unit vectors, with gradients (training path)."""
        return self.network(batch)

    @property
    def multi_vectors(self) -> int | None:
        """K, the vectors per item ``embed_multi`` returns; None when the model has no ReMatch tokens."""
        return self.backbone.rematch.k if self.backbone.rematch is not None else None

    def prepare(self, items: Sequence[Item | str]) -> list[Encoded]:
        return [self.encoder.encode(as_item(item), i) for i, item in enumerate(items)]

    @torch.inference_mode()
    def encode(self, items: Sequence[Item | str], dimensions: int | None = None,
               progress: bool | None = None, multivector: tuple[int, str] | None = None) -> np.ndarray:
        """Embed ``items`` -> float32 array (N, dimensions or H), or (N, 1 + K, D) with ``multivector``
        (see :meth:`encode_prepared`). Bad media raise MediaError."""
        encoded = self.prepare(items)
        return self.encode_prepared(encoded, dimensions, progress, multivector)

    @torch.inference_mode()
    def encode_prepared(self, encoded: list[Encoded], dimensions: int | None = None,
                        progress: bool | None = None, multivector: tuple[int, str] | None = None) -> np.ndarray:
        """(N, D) vectors; with ``multivector`` = (K, source), (N, 1 + K, D): each item's pooled vector
        followed by its K token states, all from one forward pass."""
        dimensions = dimensions if dimensions is not None else self.embed_cfg.dimensions
        rows = () if multivector is None else (1 + multivector[0],)
        out = np.zeros((len(encoded), *rows, dimensions or self.dim), dtype=np.float32)
        if not encoded:
            return out
        batches = plan_batches([len(e) for e in encoded], self.embed_cfg.batch_tokens,
                               self.embed_cfg.max_batch_size)
        show = self.embed_cfg.progress if progress is None else progress
        with tqdm(total=len(encoded), desc="embedding", unit="item", disable=not show or len(encoded) < 64) as bar:
            for indices in batches:
                batch = self.encoder.collate([encoded[i] for i in indices])
                vectors = self.forward(batch) if multivector is None else self.network.multivector(batch, *multivector)
                vectors = matryoshka(vectors, dimensions)
                out[indices] = vectors.cpu().numpy()
                bar.update(len(indices))
        return out

    @torch.inference_mode()
    def embed_multi(self, items: Sequence[Item | str], dimensions: int | None = None,
                    progress: bool | None = None) -> np.ndarray:
        """The K ReMatch token states of each item -> float32 array (N, K, dimensions or H), each state
        L2-normalised (then Matryoshka-truncated and renormalised when ``dimensions`` is set). ``encode``
        returns the normalised mean of the states before their normalisation (E*). A model without ReMatch tokens raises ValueError; bad media MediaError.
        """
        k = self.multi_vectors
        if k is None:
            raise ValueError(f"{self.model_id} has no ReMatch tokens (model.rematch): it embeds one vector per "
                             "item; use encode")
        dimensions = dimensions if dimensions is not None else self.embed_cfg.dimensions
        encoded = self.prepare(items)
        out = np.zeros((len(encoded), k, dimensions or self.dim), dtype=np.float32)
        show = self.embed_cfg.progress if progress is None else progress
        batches = plan_batches([len(e) + k for e in encoded], self.embed_cfg.batch_tokens,
                               self.embed_cfg.max_batch_size) if encoded else []
        with tqdm(total=len(encoded), desc="embedding", unit="item", disable=not show or len(encoded) < 64) as bar:
            for indices in batches:
                states = self.network.token_states(self.encoder.collate([encoded[i] for i in indices]))
                out[indices] = matryoshka(normalize(states.float()), dimensions).cpu().numpy()
                bar.update(len(indices))
        return out

    def encode_lenient(self, items: Sequence[Item | str], dimensions: int | None = None
                       ) -> tuple[np.ndarray, list[int], list[MediaError]]:
        """Embed what can be embedded: returns (vectors of the good items, their indices, the errors)."""
        good, indices, errors = [], [], []
        for i, item in enumerate(items):
            try:
                good.append(self.encoder.encode(as_item(item), i))
                indices.append(i)
            except MediaError as exc:
                log.warning("skipping %s", exc)
                errors.append(exc)
        return self.encode_prepared(good, dimensions), indices, errors

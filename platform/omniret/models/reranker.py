"""Pointwise yes/no reranker in the style of Qwen3-VL-Reranker.

score(q, d) = sigmoid(logit_yes - logit_no), where both logits come from the LM head applied to the
last hidden state. Only two rows of the LM head matter, so the head is collapsed into one linear row
w = W[yes] - W[no] (the official code's ``get_binary_linear``): the same score, without computing the
whole vocabulary. Prompts are left-padded so the scored position is -1 for every row.

Truncation never cuts special tokens (visual placeholders, chat markers) nor the final assistant
header (the last ``TAIL_KEEP`` tokens); it drops plain text tokens from the middle of the prompt.
The query's media are decoded once per ``score`` call, not once per document, and all user text
(instruction, query, documents) is tokenized as plain text (see ``omniret.models.encoding``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from omniret.config import MediaConfig, OmniretConfig, RerankConfig
from omniret.errors import ConfigError, MediaError
from omniret.items import Item, as_item
from omniret.models.backbone import Backbone, forward_hidden, load_backbone, model_tag, unwrap
from omniret.models.encoding import Encoded, InputEncoder, Part, Visual
from omniret.models.pooling import last_token_pool
from omniret.models.prompts import RERANK_HEAD, RERANK_TAIL, TEMPLATE, USER, VISUAL, get_template

TAIL_KEEP = 5  # "<|im_end|>", "\n", "<|im_start|>", "assistant", "\n"
QUERY_LABEL, DOCUMENT_LABEL = "<Query>:", "\n<Document>:"  # what precedes each side of a pair


def truncate_middle(ids: list[int], max_length: int, protected: set[int], tail_keep: int = TAIL_KEEP) -> list[int]:
    """Drop unprotected tokens from the middle until ``ids`` fits; raise if only protected ones remain."""
    excess = len(ids) - max_length
    if excess <= 0:
        return ids
    body = len(ids) - tail_keep
    droppable = [i for i in range(body) if ids[i] not in protected]
    if len(droppable) < excess:
        raise ValueError(f"{len(ids)} tokens, of which only {len(droppable)} may be cut; limit {max_length}")
    middle = len(droppable) // 2
    start = max(0, middle - excess // 2)
    drop = set(droppable[start:start + excess])
    return [t for i, t in enumerate(ids) if i not in drop]


def single_token_id(tokenizer, word: str, where: str) -> int:
    """The id of ``word`` as one token; a checkpoint whose tokenizer splits it cannot be a yes/no reranker."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ConfigError(f"reranker checkpoint {where}: its tokenizer splits {word!r} into {len(ids)} tokens "
                          f"{ids}; a yes/no reranker scores one LM-head row per answer, so both 'yes' and 'no' "
                          "must be single tokens (use a Qwen-VL tokenizer)")
    return ids[0]


class RerankingModel(nn.Module):
    """``nn.Module`` view of the reranker's score, so DDP can wrap it in training.

    forward(left-padded collated pairs) -> (B,) float32 logit_yes - logit_no at the last position,
    through the collapsed head ``W[yes] - W[no]`` (plus the bias difference, if the head has a bias).
    """

    def __init__(self, model: nn.Module, yes_id: int, no_id: int):
        super().__init__()
        self.model = model
        self.yes_id, self.no_id = yes_id, no_id

    def binary_head(self) -> torch.Tensor:
        weight = unwrap(self.model).lm_head.weight
        return weight[self.yes_id] - weight[self.no_id]

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = forward_hidden(self.model, batch)
        return self.answer_logits(last_token_pool(hidden, batch["attention_mask"].to(hidden.device)))

    def answer_logits(self, last: torch.Tensor) -> torch.Tensor:
        """(N, H) last-layer states of answer positions -> (N,) float32 logit_yes - logit_no."""
        diff = last @ self.binary_head().to(last.dtype)
        bias = getattr(unwrap(self.model).lm_head, "bias", None)
        if bias is not None:
            diff = diff + (bias[self.yes_id] - bias[self.no_id])
        return diff.float()


class Reranker:
    def __init__(self, backbone: Backbone, media: MediaConfig | None = None, cfg: RerankConfig | None = None,
                 model_id: str | None = None):
        self.backbone = backbone
        self.cfg = cfg or RerankConfig()
        tok = backbone.tokenizer
        # Checked first: a checkpoint that cannot answer yes/no is refused before anything else is built.
        self.yes_id, self.no_id = (single_token_id(tok, word, str(backbone.path)) for word in ("yes", "no"))
        self.model_id = model_id or backbone.path.name
        # The template argument only matters for video handling; rerank prompts are built here.
        self.encoder = InputEncoder(tok, backbone.family, backbone.spec, media or MediaConfig(),
                                    get_template("qwen3_vl_embedding"), self.cfg.max_length)
        self.protected = set(tok.all_special_ids) | {self.encoder.image_id, self.encoder.video_id}
        self.network = RerankingModel(backbone.model, self.yes_id, self.no_id)

    @classmethod
    def from_config(cls, cfg: OmniretConfig) -> Reranker:
        """The reranker of ``cfg.rerank.model`` (its own checkpoint, not the embedder's ``cfg.model``)."""
        return cls(load_backbone(cfg.rerank.model), cfg.media, cfg.rerank, model_tag(cfg.rerank.model))

    def binary_head(self) -> torch.Tensor:
        """(H,) weight of the collapsed head: W_lm[yes] - W_lm[no]."""
        return self.network.binary_head()

    def side_parts(self, label: str, item: Item, name: str, first: int) -> tuple[list[Part], list[Visual]]:
        """Decode one side of a pair once: its prompt parts (visual indices from ``first``) and visuals."""
        visuals, text = self.encoder.visuals_and_text(item, name)
        parts: list[Part] = [(TEMPLATE, label)]
        parts += [(VISUAL, first + i) for i in range(len(visuals))]
        parts.append((USER, text))
        return parts, visuals

    def prompt_ids(self, q_parts: list[Part], d_parts: list[Part], visuals: list[Visual], instruction: str | None,
                   name: str) -> list[int]:
        """Ids of the yes/no prompt around a query's and a document's parts, truncated to ``max_length``."""
        inst = instruction if instruction is not None else self.cfg.instruction
        parts = [(TEMPLATE, f"{RERANK_HEAD}<Instruct>: "), (USER, inst), *q_parts, *d_parts, (TEMPLATE, RERANK_TAIL)]
        ids = self.encoder.assemble(parts, visuals, name)
        try:
            return truncate_middle(ids, self.cfg.max_length, self.protected)
        except ValueError as exc:
            raise MediaError(name, f"{exc}; lower media budgets or raise rerank.max_length") from exc

    def encode_pair(self, query: Item, document: Item, instruction: str | None, index: int = 0) -> Encoded:
        return self._pairs(query, [document], instruction, start=index)[0]

    def _pairs(self, query: Item, documents: Sequence[Item], instruction: str | None, start: int = 0
               ) -> list[Encoded]:
        """Encode (query, document) pairs; the query's media are decoded once for all documents."""
        q_parts, q_vis = self.side_parts(QUERY_LABEL, query, query.name or "query", 0)
        pairs = []
        for i, document in enumerate(documents, start):
            d_parts, d_vis = self.side_parts(DOCUMENT_LABEL, document, document.name or f"document {i}", len(q_vis))
            visuals = q_vis + d_vis
            pairs.append(Encoded(self.prompt_ids(q_parts, d_parts, visuals, instruction, f"pair {i}"), visuals))
        return pairs

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B,) logit_yes - logit_no at the last position."""
        return self.network(batch)

    @torch.inference_mode()
    def score(self, query: Item | str, documents: Sequence[Item | str], instruction: str | None = None
              ) -> np.ndarray:
        """Relevance in (0, 1) of each document to the query."""
        pairs = self._pairs(as_item(query), [as_item(doc) for doc in documents], instruction)
        scores = np.zeros(len(pairs), dtype=np.float32)
        for start in range(0, len(pairs), self.cfg.batch_size):
            chunk = pairs[start:start + self.cfg.batch_size]
            batch = self.encoder.collate(chunk, padding_side="left")
            scores[start:start + len(chunk)] = torch.sigmoid(self.logits(batch)).cpu().numpy()
        return scores

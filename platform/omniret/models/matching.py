"""ReMatch's multi-view query-document matching (METHODS §6.2): prompts with latent slots, and their forward.

A view is the reranker's yes/no prompt (:class:`omniret.models.reranker.Reranker`: instruction, query,
document, assistant header) where either side may be an item, as the reranker renders it, or a latent:
one input-space vector Z = MLP(E*) of that item's fused embedding, put in a slot right after the side's
label (``<Query>:`` / ``<Document>:``). One vector per latent side is our choice (the note gives no shape).
The slot is the tokenizer's pad token written into template text, so it is one special token that user
text cannot produce and truncation never cuts; :func:`omniret.models.rematch.substituted` swaps its row.

Views are scored by the same model's LM head (``W[yes] - W[no]`` at the last position) in one of two ways
that give the same logits:

- sequential: every view is a row of a left-padded batch;
- packed: ``group`` consecutive views (a sample's 8) are concatenated into one row, with a block-diagonal
  causal attention mask (each view's tokens see only earlier tokens of the same view) and each view's own
  position ids (M-RoPE, computed as for the view alone). Needs sdpa or eager attention (a 4-D mask).

Because every view keeps its own positions, the order of a sample's views inside the packed row leaks
nothing; the training step still shuffles which document slot holds the positive (the paper's d1/d2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from omniret.items import Item
from omniret.models.backbone import forward_hidden, position_ids, unwrap
from omniret.models.encoding import Encoded, Part, Visual
from omniret.models.prompts import TEMPLATE
from omniret.models.rematch import substituted
from omniret.models.reranker import DOCUMENT_LABEL, QUERY_LABEL, Reranker

Side = Item | int  # an item, or the index of its latent vector


@dataclass
class View:
    encoded: Encoded
    latents: list[int] = field(default_factory=list)  # latent index of each slot, in position order
    slots: list[int] = field(default_factory=list)  # positions of the slots in encoded.input_ids


class MatchingViews:
    """Encode views for a reranker's prompt, and score them (sequential or packed)."""

    def __init__(self, reranker: Reranker):
        self.reranker = reranker
        tok = reranker.backbone.tokenizer
        self.slot_token, self.slot_id = tok.pad_token, tok.pad_token_id
        if self.slot_id is None or self.slot_id not in reranker.protected:
            raise ValueError("ReMatch's latent slots need a special pad token in the tokenizer")

    def _side(self, label: str, side: Side, name: str, first: int) -> tuple[list[Part], list[Visual], list[int]]:
        if isinstance(side, int):
            return [(TEMPLATE, label + self.slot_token)], [], [side]
        parts, visuals = self.reranker.side_parts(label, side, name, first)
        return parts, visuals, []

    def encode(self, query: Side, document: Side, instruction: str | None, name: str = "view") -> View:
        """One view; with two items its ids equal :meth:`Reranker.encode_pair`'s."""
        q_parts, q_vis, q_lat = self._side(QUERY_LABEL, query, f"{name} query", 0)
        d_parts, d_vis, d_lat = self._side(DOCUMENT_LABEL, document, f"{name} document", len(q_vis))
        ids = self.reranker.prompt_ids(q_parts, d_parts, q_vis + d_vis, instruction, name)
        slots = [i for i, t in enumerate(ids) if t == self.slot_id]
        if len(slots) != len(q_lat) + len(d_lat):  # the template itself must not hold the pad token
            raise ValueError(f"{name}: {len(slots)} slot tokens for {len(q_lat) + len(d_lat)} latents")
        return View(Encoded(ids, q_vis + d_vis), q_lat + d_lat, slots)

    def logits(self, views: Sequence[View], latents: torch.Tensor, packed: bool = False, group: int = 8
               ) -> torch.Tensor:
        """(len(views),) logit_yes - logit_no; ``latents`` (n, H) are the vectors the views' slots refer to."""
        net = self.reranker.network
        values = latents[[i for v in views for i in v.latents]]
        batch = self.reranker.encoder.collate([v.encoded for v in views], padding_side="left")
        if not packed:
            length = batch["input_ids"].shape[1]
            slots = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
            for row, v in enumerate(views):
                slots[row, [length - len(v.encoded) + p for p in v.slots]] = True
            with substituted(net.model, slots, values):
                return net(batch)
        if len(views) % group:
            raise ValueError(f"{len(views)} views do not fill groups of {group}")
        with torch.no_grad():  # positions of each view alone, as the sequential batch has them
            single = position_ids(net.model, batch)
        packed_batch, slots, answers = self._pack(views, single, group)
        with substituted(net.model, slots, values):
            hidden = forward_hidden(net.model, packed_batch)
        return net.answer_logits(hidden[answers[:, 0], answers[:, 1]])

    def _pack(self, views: Sequence[View], single: torch.Tensor, group: int):
        """Rows of ``group`` views: the collated batch with a 4-D block mask and position ids, the slot mask
        and the (row, column) of every view's answer position."""
        enc = self.reranker.encoder
        width = single.shape[-1]
        rows = [views[i:i + group] for i in range(0, len(views), group)]
        merged = [Encoded([t for v in row for t in v.encoded.input_ids], [x for v in row for x in v.encoded.visuals])
                  for row in rows]
        batch = enc.collate(merged, padding_side="left")
        count, length = batch["input_ids"].shape
        allowed = torch.zeros((count, 1, length, length), dtype=torch.bool)
        positions = torch.zeros((single.shape[0], count, length), dtype=single.dtype)
        slots = torch.zeros((count, length), dtype=torch.bool)
        answers = []
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        for r, row in enumerate(rows):
            start = length - len(merged[r])
            allowed[r, 0, range(start), range(start)] = True  # padding rows see themselves (no empty softmax)
            for j, v in enumerate(row):
                n, view = len(v.encoded), r * group + j
                block = slice(start, start + n)
                allowed[r, 0, block, block] = causal[:n, :n]
                positions[:, r, block] = single[:, view, width - n:].cpu()
                slots[r, [start + p for p in v.slots]] = True
                answers.append((r, start + n - 1))
                start += n
        batch["attention_mask"] = self._mask(allowed)
        batch["position_ids"] = positions
        return batch, slots, torch.tensor(answers)

    def _mask(self, allowed: torch.Tensor) -> torch.Tensor:
        model = unwrap(self.reranker.network.model)
        attn = getattr(model.config, "_attn_implementation", "sdpa")
        if attn == "sdpa":
            return allowed  # sdpa takes a boolean mask (True: attend)
        if attn == "eager":  # eager adds the mask to the scores
            dtype = next(model.parameters()).dtype
            return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
        raise ValueError(f"packed matching views need sdpa or eager attention, not {attn}; set "
                         "model.rematch.packed=false")

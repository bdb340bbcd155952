"""The reasoner: items -> ECR with any Qwen-VL checkpoint, through transformers ``generate``.

Prompts are assembled by :class:`omniret.models.encoding.InputEncoder` (the same media decoding and
visual-token assembly as the embedder) with the reasoning template turned into a prompt template,
left-padded, and generated in batches of ``reason.batch_size``. Greedy decoding is deterministic,
and a batch gives the same text as its items one by one (position ids follow the attention mask).
Sampled decoding is seeded per batch from ``reason.seed`` and the batch's item keys, so a re-run
of the same batch writes the same text. An item whose media cannot be read becomes a
:class:`~omniret.errors.MediaError` outcome of its own; the rest of its batch goes on.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from omniret.config import MediaConfig, ReasonConfig
from omniret.errors import MediaError
from omniret.items import Item
from omniret.models.backbone import Backbone, checkpoint_path, load_backbone
from omniret.models.encoding import Encoded, InputEncoder
from omniret.reasoning.ecr import ECR, parse_ecr
from omniret.reasoning.templates import ReasonTemplate

_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")


def reasoner_id(cfg: ReasonConfig) -> str:
    """Checkpoint name (+ adapter) and a digest of the decoding settings: what decides the text."""
    name = checkpoint_path(cfg.model).name
    if cfg.model.adapter:
        name += "+" + str(cfg.model.adapter).rstrip("/").rsplit("/", 1)[-1]
    decoding = {"max_new_tokens": cfg.max_new_tokens, "do_sample": cfg.do_sample, "max_length": cfg.max_length}
    if cfg.do_sample:
        decoding |= {"temperature": cfg.temperature, "top_p": cfg.top_p, "seed": cfg.seed}
    digest = hashlib.sha256(json.dumps(decoding, sort_keys=True).encode()).hexdigest()[:8]
    return f"{name}@{digest}"


@dataclass
class Request:
    """One item to reason about, with its template and a key that seeds sampled decoding."""

    item: Item
    template: ReasonTemplate
    key: str = ""


class Reasoner:
    def __init__(self, backbone: Backbone, cfg: ReasonConfig | None = None, media: MediaConfig | None = None):
        self.backbone = backbone
        self.cfg = cfg or ReasonConfig()
        self.media = media or MediaConfig()
        self._encoders: dict[str, InputEncoder] = {}
        tok = backbone.tokenizer
        stops = {tok.eos_token_id, *(tok.convert_tokens_to_ids(t) for t in _STOP_TOKENS)}
        self.stop_ids = sorted(i for i in stops if i is not None and i != tok.unk_token_id)

    @classmethod
    def from_config(cls, cfg: ReasonConfig, media: MediaConfig | None = None) -> Reasoner:
        return cls(load_backbone(cfg.model), cfg, media)

    def encoder(self, template: ReasonTemplate) -> InputEncoder:
        if template.name not in self._encoders:
            b = self.backbone
            self._encoders[template.name] = InputEncoder(b.tokenizer, b.family, b.spec, self.media,
                                                         template.prompt_template(), self.cfg.max_length)
        return self._encoders[template.name]

    def encode(self, request: Request, index: int = 0) -> Encoded:
        """The prompt of one request: the template's instruction, then the item's own task instruction."""
        item = replace(request.item, instruction=request.template.instruction(request.item.instruction),
                       reasoning=None)
        return self.encoder(request.template).encode(item, index)

    def generate(self, requests: Sequence[Request]) -> list[ECR | MediaError]:
        """One outcome per request, in order: an ECR, or the MediaError that item raised."""
        outcomes: list[ECR | MediaError | None] = [None] * len(requests)
        by_template: dict[str, list[tuple[int, Encoded]]] = {}
        for i, request in enumerate(requests):
            try:
                by_template.setdefault(request.template.name, []).append((i, self.encode(request, i)))
            except MediaError as exc:
                outcomes[i] = exc
        size = self.cfg.batch_size
        for encoded in by_template.values():
            template = requests[encoded[0][0]].template
            for start in range(0, len(encoded), size):
                chunk = encoded[start:start + size]
                keys = [requests[i].key for i, _ in chunk]
                for (i, _), ecr in zip(chunk, self._generate(template, [e for _, e in chunk], keys), strict=True):
                    outcomes[i] = ecr
        return outcomes  # type: ignore[return-value]

    @torch.inference_mode()
    def _generate(self, template: ReasonTemplate, batch: list[Encoded], keys: list[str]) -> list[ECR]:
        from transformers import GenerationConfig

        cfg, tok = self.cfg, self.backbone.tokenizer
        inputs = self.encoder(template).collate(batch, padding_side="left")
        device = next(self.backbone.model.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        for key in ("pixel_values", "pixel_values_videos"):
            if key in inputs:
                inputs[key] = inputs[key].to(self.backbone.dtype)
        sampling = {"temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": None} if cfg.do_sample else {
            "temperature": None, "top_p": None, "top_k": None}
        gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample,
                               pad_token_id=tok.pad_token_id, eos_token_id=self.stop_ids, **sampling)
        if cfg.do_sample:
            torch.manual_seed(zlib.crc32(f"{cfg.seed}/{'|'.join(keys)}".encode()))
        out = self.backbone.model.generate(**inputs, generation_config=gen)
        new = out[:, inputs["input_ids"].shape[1]:].tolist()
        results = []
        for row in new:
            stop = next((j for j, t in enumerate(row) if t in self.stop_ids), None)
            tokens = row if stop is None else row[:stop]
            hit_limit = stop is None and len(row) >= cfg.max_new_tokens
            text = tok.decode(tokens, skip_special_tokens=True)
            results.append(parse_ecr(template.assistant_prefix, text, hit_limit=hit_limit,
                                     new_tokens=len(tokens)))
        return results

"""UME-R1's model view over a :class:`~omniret.models.backbone.Backbone` (METHODS §5.1): one model that
embeds discriminatively (one forward pass, the state at ``<disc_emb>`` of the prompt) or generatively
(it writes ``<think>…</think><answer>…</answer><gen_emb>`` and the state at the generated ``<gen_emb>``
is the embedding).

- **Prompt.** :data:`UME_R1_TEMPLATE` renders the released user turn (``UME_R1_USER_TURN``): visuals, the
  item (instruction, a space, text), then the turn's fixed tail, which holds ``<disc_emb>``, in the
  chat layout with the assistant header open. ``<disc_emb>`` (and the ``<gen_emb>`` the tail names)
  are placed by the template, by id: user text is tokenized with special tokens split, so an item
  can neither forge nor carry them. Qwen2-VL's and Qwen2.5-VL's chat templates add the default system
  turn ``You are a helpful assistant.`` to a conversation without one; UME-R1 applies that template
  to a user turn only, so the layout carries that system turn.
- **Discriminative** (:meth:`GenerativeEmbedder.disc_forward`, :meth:`~GenerativeEmbedder.disc_embed`):
  left-padded prompts, one forward pass.
- **Generative** (:meth:`~GenerativeEmbedder.generate`): left-padded prompts, transformers ``generate``
  (greedy, or sampled under a seed), then one forward pass over prompt + completion for the read-out
  (:func:`~omniret.models.gen_tokens.gen_embedding`: the state whose input token is the last generated
  ``<gen_emb>``). ``num_return_sequences`` repeats each prompt (item-major rows). The completion ends
  at the first stop token (the tokenizer's EOS or ``<|im_end|>``), which counts as completion; what
  ``generate`` pads after it does not. Completions are decoded with ``skip_special_tokens=False``
  so the format reward sees ``<gen_emb>``. A completion without ``<gen_emb>`` gets the fallback
  read-out (its last token; the prompt's last when empty) and ``found=False``, never an error.
- Visual placeholders (``<|image_pad|>`` and kin) and ``<disc_emb>`` are suppressed in generation: a
  generated placeholder would have no visual behind it and break the read-out's forward pass.
- Teacher forcing (:meth:`~GenerativeEmbedder.completion_batch`, :meth:`~GenerativeEmbedder.gen_forward`):
  the same read-out over given completion ids, with gradients; SFT uses it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from omniret.config import MediaConfig
from omniret.errors import ConfigError
from omniret.items import Item, as_item
from omniret.models.backbone import Backbone, forward_hidden, unwrap
from omniret.models.encoding import Encoded, InputEncoder
from omniret.models.gen_tokens import (
    DISC_EMB,
    EMBEDDING_TOKENS,
    GEN_EMB,
    UME_R1_USER_TURN,
    disc_embedding,
    gen_embedding,
)
from omniret.models.prompts import PromptTemplate

DEFAULT_SYSTEM = "You are a helpful assistant."  # Qwen2-VL / Qwen2.5-VL chat templates' default system turn
IM_END = "<|im_end|>"
_VISUAL_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>")

UME_R1_TEMPLATE = PromptTemplate(
    name="ume_r1",
    layout=("<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{visuals}{body}"
            + UME_R1_USER_TURN.split("{question}", 1)[1] + "<|im_end|>\n<|im_start|>assistant\n"),
    instruction_in="body",
    instruction_separator=" ",
    system_when_body=DEFAULT_SYSTEM,
    default_instruction="",
    padding_side="left",
    pooled_token=DISC_EMB,
    source="XMUDeepLIT/UME-R1 qwen_module.py user turn (question first, then <disc_emb> and the fixed text), "
           "Qwen2-VL chat template with its default system turn, add_generation_prompt=True",
)


def has_embedding_tokens(tokenizer) -> bool:
    """Whether ``tokenizer`` knows both ``<disc_emb>`` and ``<gen_emb>`` (a UME-R1 checkpoint)."""
    vocab = tokenizer.get_vocab()
    return all(token in vocab for token in EMBEDDING_TOKENS)


@dataclass
class Generation:
    """What :meth:`GenerativeEmbedder.generate` returns; rows are item-major (item i's sequences at
    ``i * n .. i * n + n - 1`` for ``n = num_return_sequences``)."""

    texts: list[str]  # completions decoded with special tokens kept (up to and including the stop token)
    completion_ids: list[list[int]]  # the same, as ids
    embeddings: np.ndarray  # (rows, H) float32, L2-normalised generative embeddings
    found: np.ndarray  # (rows,) bool: the completion has a <gen_emb> (False: fallback read-out)
    item_index: list[int]  # the item each row belongs to
    # (rows, H) discriminative embeddings of the same prompts, read from the same forward pass (the prompt's
    # states do not see the completion), so ``auto`` costs nothing more than ``gen``
    disc: np.ndarray | None = None

    def auto(self) -> np.ndarray:
        """``auto`` embeddings: generative where the completion has a ``<gen_emb>``, discriminative elsewhere."""
        return np.where(self.found[:, None], self.embeddings, self.disc)


class GenerativeEmbedder:
    """Discriminative and generative embeddings of a checkpoint that has UME-R1's tokens.

    A checkpoint without them raises :class:`ConfigError` (``add_embedding_tokens`` adds them before
    training). ``max_length`` bounds the prompt (only the item's text is truncated).
    """

    def __init__(self, backbone: Backbone, media: MediaConfig | None = None, max_length: int = 8192,
                 batch_size: int = 8):
        tok = backbone.tokenizer
        if not has_embedding_tokens(tok):
            raise ConfigError(f"{backbone.path} has no {DISC_EMB} / {GEN_EMB} tokens: it is not a UME-R1 checkpoint "
                              "(train it with train.objective=ume_sft first)")
        self.backbone = backbone
        self.batch_size = batch_size
        self.encoder = InputEncoder(tok, backbone.family, backbone.spec, media or MediaConfig(), UME_R1_TEMPLATE,
                                    max_length)
        self.disc_id = tok.convert_tokens_to_ids(DISC_EMB)
        self.gen_id = tok.convert_tokens_to_ids(GEN_EMB)
        eos = tok.eos_token_id
        im_end = tok.get_vocab().get(IM_END)
        #: the token that closes an assistant turn (a CoT target ends with it)
        self.im_end_id = im_end if im_end is not None else eos
        self.stop_ids = sorted({i for i in (eos, im_end) if i is not None and i >= 0})
        self.suppressed = [i for i in (tok.convert_tokens_to_ids(t) for t in (*_VISUAL_TOKENS, DISC_EMB))
                           if i is not None and i >= 0 and i != tok.unk_token_id]

    @property
    def model(self):
        return self.backbone.model

    # ---- prompts -----------------------------------------------------------------------------
    def prepare(self, items: Sequence[Item | str]) -> list[Encoded]:
        """Encode items into UME-R1 prompts (MediaError names a bad item)."""
        return [self.encoder.encode(as_item(item), i) for i, item in enumerate(items)]

    def collate(self, encoded: Sequence[Encoded]) -> dict[str, torch.Tensor]:
        """Left-padded batch: every prompt ends at the last column, where generation continues."""
        return self.encoder.collate(list(encoded), padding_side="left")

    # ---- discriminative ----------------------------------------------------------------------
    def disc_forward(self, batch: dict[str, torch.Tensor], model=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H) float32 unit vectors at the last ``<disc_emb>`` of each prompt (with gradients), (B,) found."""
        hidden = forward_hidden(model if model is not None else self.model, batch)
        ids, mask = batch["input_ids"].to(hidden.device), batch["attention_mask"].to(hidden.device)
        vectors, found = disc_embedding(ids, hidden.float(), mask, self.disc_id)
        return vectors, found

    @torch.inference_mode()
    def disc_embed(self, items: Sequence[Item | str]) -> np.ndarray:
        """(N, H) float32 discriminative embeddings, one forward pass per batch."""
        encoded = self.prepare(items)
        out = []
        for start in range(0, len(encoded), self.batch_size):
            vectors, _ = self.disc_forward(self.collate(encoded[start:start + self.batch_size]))
            out.append(vectors.cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self._hidden_size()), np.float32)

    # ---- generative --------------------------------------------------------------------------
    def completion_mask(self, completions: torch.Tensor) -> torch.Tensor:
        """(B, C) 1 for completion tokens up to and including the first stop token, 0 after it."""
        stop = torch.isin(completions, torch.tensor(self.stop_ids, device=completions.device))
        # tokens strictly after the first stop are padding: a stop seen before this position
        after = (stop.long().cumsum(dim=1) - stop.long()) > 0
        return (~after).long()

    def completion_batch(self, prompts: dict[str, torch.Tensor], completions: torch.Tensor,
                         completion_mask: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], int, torch.Tensor]:
        """Prompt batch (left-padded) + completion ids (B, C), right-padded -> (batch, prompt_length, mask)."""
        prompt_length = prompts["input_ids"].shape[1]
        completions = completions.to(prompts["input_ids"].device)
        if completion_mask is None:
            completion_mask = self.completion_mask(completions)
        completion_mask = completion_mask.to(prompts["attention_mask"].dtype).to(completions.device)
        batch = dict(prompts)
        batch["input_ids"] = torch.cat([prompts["input_ids"], completions], dim=1)
        batch["attention_mask"] = torch.cat([prompts["attention_mask"], completion_mask], dim=1)
        batch["mm_token_type_ids"] = torch.cat(
            [prompts["mm_token_type_ids"], torch.zeros_like(completions, dtype=prompts["mm_token_type_ids"].dtype)],
            dim=1)
        return batch, prompt_length, completion_mask

    def gen_forward(self, batch: dict[str, torch.Tensor], prompt_length: int, completion_mask: torch.Tensor,
                    model=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Forward over prompt + completion: (B, H) generative embeddings, (B,) found, (B, T, H) hidden."""
        hidden = forward_hidden(model if model is not None else self.model, batch)
        ids = batch["input_ids"].to(hidden.device)
        vectors, found = gen_embedding(ids, hidden.float(), prompt_length, self.gen_id,
                                       completion_mask.to(hidden.device))
        return vectors, found, hidden

    def disc_of(self, batch: dict[str, torch.Tensor], hidden: torch.Tensor, prompt_length: int) -> torch.Tensor:
        """Discriminative embeddings from the states of a prompt + completion pass (the prompt part only)."""
        ids = batch["input_ids"][:, :prompt_length].to(hidden.device)
        mask = batch["attention_mask"][:, :prompt_length].to(hidden.device)
        return disc_embedding(ids, hidden[:, :prompt_length].float(), mask, self.disc_id)[0]

    def _generate_kwargs(self, sample: bool, temperature: float, top_p: float) -> dict:
        tok = self.backbone.tokenizer
        kwargs = {"do_sample": sample, "eos_token_id": self.stop_ids, "pad_token_id": tok.pad_token_id,
                  "suppress_tokens": self.suppressed or None, "use_cache": True}
        if sample:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        else:  # greedy: unset the checkpoint's sampling defaults so transformers does not warn about them
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs

    @torch.inference_mode()
    def generate(self, items: Sequence[Item | str], max_new_tokens: int = 256, sample: bool = False,
                 seed: int = 0, num_return_sequences: int = 1, temperature: float = 1.0,
                 top_p: float = 1.0) -> Generation:
        """Generate a completion per item (``num_return_sequences`` each) and read out ``<gen_emb>``.

        Greedy by default; ``sample=True`` samples at ``temperature`` / ``top_p`` under ``seed`` (the
        global RNG is restored afterwards). Batches of ``batch_size`` prompts, left-padded.
        """
        return self.generate_prepared(self.prepare(items), max_new_tokens, sample, seed, num_return_sequences,
                                      temperature, top_p)

    @torch.inference_mode()
    def generate_prepared(self, encoded: Sequence[Encoded], max_new_tokens: int = 256, sample: bool = False,
                          seed: int = 0, num_return_sequences: int = 1, temperature: float = 1.0,
                          top_p: float = 1.0) -> Generation:
        """:meth:`generate` on prompts already encoded by :meth:`prepare`."""
        if num_return_sequences < 1 or max_new_tokens < 1:
            raise ValueError("num_return_sequences and max_new_tokens must be >= 1")
        rows = [e for e in encoded for _ in range(num_return_sequences)]
        index = [i for i in range(len(encoded)) for _ in range(num_return_sequences)]
        tok = self.backbone.tokenizer
        texts, ids, vectors, found, discs = [], [], [], [], []
        model = unwrap(self.model)
        param = next(model.parameters())
        rng = torch.random.fork_rng(devices=[param.device] if param.device.type == "cuda" else [])
        with rng if sample else contextlib.nullcontext():
            if sample:
                torch.manual_seed(seed)
            for start in range(0, len(rows), self.batch_size):
                prompts = self.collate(rows[start:start + self.batch_size])
                inputs = {k: v.to(param.device) for k, v in prompts.items()}
                for key in ("pixel_values", "pixel_values_videos"):
                    if key in inputs:
                        inputs[key] = inputs[key].to(param.dtype)
                out = model.generate(**inputs, max_new_tokens=max_new_tokens,
                                     **self._generate_kwargs(sample, temperature, top_p))
                completions = out[:, inputs["input_ids"].shape[1]:]
                batch, length, mask = self.completion_batch(inputs, completions)
                vec, hit, hidden = self.gen_forward(batch, length, mask)
                discs.append(self.disc_of(batch, hidden, length).cpu().numpy())
                for row, row_mask in zip(completions.tolist(), mask.tolist(), strict=True):
                    kept = [t for t, m in zip(row, row_mask, strict=True) if m]
                    ids.append(kept)
                    texts.append(tok.decode(kept, skip_special_tokens=False))
                vectors.append(vec.cpu().numpy())
                found.append(hit.cpu().numpy())
        dim = self._hidden_size()
        empty = np.zeros((0, dim), np.float32)
        return Generation(texts, ids, np.concatenate(vectors) if vectors else empty,
                          np.concatenate(found) if found else np.zeros(0, bool), index,
                          np.concatenate(discs) if discs else empty)

    @torch.inference_mode()
    def embed_completions(self, items: Sequence[Item | str], completions: Sequence[Sequence[int]]
                          ) -> tuple[np.ndarray, np.ndarray]:
        """Generative read-out over given completion ids (one per item): (N, H) vectors, (N,) found."""
        if len(completions) != len(items):
            raise ValueError(f"{len(items)} items but {len(completions)} completions")
        encoded = self.prepare(items)
        vectors, found = [], []
        for start in range(0, len(encoded), self.batch_size):
            chunk = list(completions[start:start + self.batch_size])
            prompts = self.collate(encoded[start:start + self.batch_size])
            batch, length, mask = self.completion_batch(prompts, *pad_completions(chunk, self.pad_id))
            vec, hit, _ = self.gen_forward(batch, length, mask)
            vectors.append(vec.cpu().numpy())
            found.append(hit.cpu().numpy())
        return np.concatenate(vectors), np.concatenate(found)

    @property
    def pad_id(self) -> int:
        return self.backbone.tokenizer.pad_token_id

    def _hidden_size(self) -> int:
        return self.model.config.text_config.hidden_size


class UmeNetwork(nn.Module):
    """``nn.Module`` view of one teacher-forced SFT pass, so DDP can wrap it: prompt + CoT target in, out
    (B, H) disc and gen embeddings (float32, unit), (B,) gen found, the summed next-token loss over the
    completion tokens (the prompt is never a label) and how many tokens it sums.

    The LM head runs on the completion positions only (the state at position t predicts token t + 1).
    """

    def __init__(self, model: nn.Module, view: GenerativeEmbedder):
        super().__init__()
        self.model = model
        self.view = view

    def forward(self, batch: dict[str, torch.Tensor], prompt_length: int, completion_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        gen, found, hidden = self.view.gen_forward(batch, prompt_length, completion_mask, model=self.model)
        disc = self.view.disc_of(batch, hidden, prompt_length)
        ids = batch["input_ids"].to(hidden.device)
        mask = completion_mask.to(hidden.device).float()
        logits = unwrap(self.model).lm_head(hidden[:, prompt_length - 1:-1]).float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, prompt_length:], reduction="none")
        return disc, gen, found, (nll * mask).sum(), mask.sum()


MODES = ("disc", "gen", "auto")


class UmeModeEmbedder:
    """An :class:`~omniret.models.embedder.Embedder`-shaped view of one UME-R1 embedding mode, for the
    evaluation runner and the isolation helper (``encoder``, ``embed_cfg``, ``dim``, ``encode_prepared``).

    ``disc``: one forward pass. ``gen``: greedy generation of at most ``max_new_tokens``, the ``<gen_emb>``
    read-out (fallback when the completion has none). ``auto``: the same generation, the generative
    embedding where the completion has a ``<gen_emb>`` and the discriminative one (same forward pass)
    where it has not: our rule, the model chooses by what it writes. ``seconds`` / ``items`` add up the
    time spent embedding, for latency per item. Rows of a generation batch share its time equally.
    """

    def __init__(self, view: GenerativeEmbedder, mode: str, max_new_tokens: int = 256, model_id: str | None = None,
                 shared: dict | None = None):
        if mode not in MODES:
            raise ValueError(f"unknown UME-R1 mode {mode!r}; choose one of {', '.join(MODES)}")
        from omniret.config import EmbedConfig

        self.view, self.mode, self.max_new_tokens = view, mode, max_new_tokens
        self.encoder = view.encoder
        self.embed_cfg = EmbedConfig(progress=False)
        self.model_id = model_id or view.backbone.path.name
        self.seconds, self.items, self.generated = 0.0, 0, 0  # generated: rows whose completion had <gen_emb>
        # gen and auto of one evaluation share their generations (prompt -> gen, disc, found, seconds): auto
        # then reports the generation time it reused, not the look-up's
        self.shared = shared

    @property
    def dim(self) -> int:
        return self.view._hidden_size()

    def prepare(self, items: Sequence[Item | str]) -> list[Encoded]:
        return self.view.prepare(items)

    def encode(self, items: Sequence[Item | str], dimensions: int | None = None, progress: bool | None = None
               ) -> np.ndarray:
        return self.encode_prepared(self.prepare(items), dimensions, progress)

    @torch.inference_mode()
    def encode_prepared(self, encoded: list[Encoded], dimensions: int | None = None, progress: bool | None = None,
                        multivector: tuple[int, str] | None = None) -> np.ndarray:
        from omniret.models.pooling import matryoshka

        if multivector is not None:  # the Embedder's signature, so the batch helpers treat both alike
            raise ValueError("UME-R1 modes give one vector per item: no multi-vector read-out")
        started = time.perf_counter()
        if self.mode == "disc":
            parts = [self.view.disc_forward(self.view.collate(encoded[s:s + self.view.batch_size]))[0].cpu()
                     for s in range(0, len(encoded), self.view.batch_size)]
            vectors = torch.cat(parts) if parts else torch.zeros(0, self.dim)
            self.seconds += time.perf_counter() - started
        else:
            rows = self._generated(encoded)
            found = np.array([r[2] for r in rows], dtype=bool)
            vectors = torch.from_numpy(np.stack([r[0] if self.mode == "gen" or r[2] else r[1] for r in rows])
                                       if rows else np.zeros((0, self.dim), np.float32))
            self.generated += int(found.sum())
            self.seconds += sum(r[3] for r in rows)
        self.items += len(encoded)
        return matryoshka(vectors, dimensions).numpy().astype(np.float32)

    def _generated(self, encoded: list[Encoded]) -> list[tuple[np.ndarray, np.ndarray, bool, float]]:
        """(gen, disc, found, seconds) per prompt: generated here, or reused from ``shared``."""
        memo = self.shared if self.shared is not None else {}
        keys = [_prompt_key(e) for e in encoded]
        todo = [i for i, k in enumerate(keys) if k not in memo]
        if todo:
            started = time.perf_counter()
            out = self.view.generate_prepared([encoded[i] for i in todo], self.max_new_tokens)
            each = (time.perf_counter() - started) / len(todo)
            for row, i in enumerate(todo):
                memo[keys[i]] = (out.embeddings[row], out.disc[row], bool(out.found[row]), each)
        return [memo[k] for k in keys]


def _prompt_key(encoded: Encoded) -> tuple:
    """What identifies a prompt: its token ids and the bytes of its visuals."""
    import hashlib

    return (tuple(encoded.input_ids), tuple(hashlib.sha256(v.patches.tobytes()).hexdigest() for v in encoded.visuals))


def pad_completions(completions: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad completion id lists to (B, C) ids and a (B, C) mask of the real tokens (C >= 1)."""
    width = max([1, *(len(c) for c in completions)])
    ids = torch.full((len(completions), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(completions), width), dtype=torch.long)
    for row, completion in enumerate(completions):
        ids[row, :len(completion)] = torch.tensor(list(completion), dtype=torch.long)
        mask[row, :len(completion)] = 1
    return ids, mask

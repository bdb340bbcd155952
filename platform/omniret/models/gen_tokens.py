"""UME-R1's embedding tokens (METHODS §5.1): ``<disc_emb>`` / ``<gen_emb>``, their initial rows, the user turn,
and reading the discriminative / generative embedding out of hidden states.

- :func:`add_embedding_tokens` adds both tokens to a tokenizer as special tokens (one id each, never split),
  grows the model's input and output embeddings when the new ids do not fit (real Qwen checkpoints already
  have spare rows past the tokenizer, so they are only grown when needed, never shrunk) and initialises each
  new row by copying the row of a named existing token of the family (:data:`INIT_SOURCES`, UME-R1's
  ``train_qwen.py``). Where the tokenizer lacks the named token (the tiny offline tokenizer has no
  ``<tool_call>``; no mapping is published for Qwen3-VL) the row is the mean of the existing rows, a choice
  of ours; the returned dict says which source each token got. ``save_pretrained`` of the tokenizer and
  model then carries the tokens with the checkpoint.
- :data:`UME_R1_USER_TURN`: the released user-turn text. It is the text of the released
  ``qwen_module.py`` verbatim, including the space before the first newline (METHODS §5.1 prints it without).
- :func:`disc_embedding`: last-layer state at the last ``<disc_emb>`` of the prompt.
- :func:`gen_embedding`: last-layer state at the last generated ``<gen_emb>``: the state whose *input* token
  is ``<gen_emb>`` in a forward pass over prompt + completion (as UME-R1's trainer computes it).
  Both are L2-normalised. A row without the token gets a fallback state and ``found=False``, never an error:
  the generative fallback is the last completion token's state (the prompt's last token when the
  completion is empty), the discriminative fallback is the prompt's last attended token.
"""

from __future__ import annotations

import torch

from omniret.models.pooling import last_token_index, normalize

DISC_EMB = "<disc_emb>"
GEN_EMB = "<gen_emb>"
EMBEDDING_TOKENS = (DISC_EMB, GEN_EMB)
MEAN_ROW = "mean"  # the source reported for a row initialised from the mean of the existing rows

# New token -> the existing token whose embedding row it starts from, per family.
INIT_SOURCES: dict[str, dict[str, str]] = {
    "qwen2_vl": {GEN_EMB: "<|object_ref_end|>", DISC_EMB: "<|object_ref_start|>"},
    "qwen2_5_vl": {GEN_EMB: "</tool_call>", DISC_EMB: "<tool_call>"},
}

UME_R1_USER_TURN = (
    "{question} \n" + DISC_EMB + "\nRepresent the above input text, images, videos, or any combination of the "
    "three as embeddings. First output the thinking process in <think> </think> tags and then summarize the "
    "entire input in a word or sentence. Finally, use the " + GEN_EMB + " tag to represent the entire input."
)


def ume_r1_user_text(question: str) -> str:
    """The user turn for ``question`` (then apply the chat template with add_generation_prompt=True)."""
    return UME_R1_USER_TURN.replace("{question}", question, 1)


def _token_id(tokenizer, token: str) -> int | None:
    """The id of ``token`` if it is a single token of the vocabulary, else None."""
    vocab = tokenizer.get_vocab()
    return vocab.get(token)


def add_embedding_tokens(model, tokenizer, family: str | None = None,
                         sources: dict[str, str] | None = None) -> dict[str, str]:
    """Add ``<disc_emb>`` and ``<gen_emb>`` and initialise their rows; return {token: source used}.

    ``sources`` overrides the family's mapping (token -> existing token). Tokens already in the tokenizer
    are left as they are (a checkpoint saved with them keeps its trained rows): their source is "present".
    """
    mapping = dict(INIT_SOURCES.get(family or "", {}))
    if sources:
        unknown = set(sources) - set(EMBEDDING_TOKENS)
        if unknown:
            raise ValueError(f"sources names {sorted(unknown)}; only {list(EMBEDDING_TOKENS)} are added")
        mapping.update(sources)
    missing = [t for t in EMBEDDING_TOKENS if _token_id(tokenizer, t) is None]
    report = {t: "present" for t in EMBEDDING_TOKENS if t not in missing}
    if not missing:
        return report
    old_rows = model.get_input_embeddings().weight.shape[0]
    # add_tokens(special_tokens=True): never split, and the same call on every transformers version (the
    # special-token dict's key for extra tokens was renamed in transformers 5).
    tokenizer.add_tokens(missing, special_tokens=True)
    if len(tokenizer) > old_rows:
        # mean_resizing=False: every new row is set below, so transformers' sampled init would be wasted work.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    matrices = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight.data_ptr() != matrices[0].data_ptr():
        matrices.append(output.weight)
    with torch.no_grad():
        for token in missing:
            new_id = _token_id(tokenizer, token)
            source = mapping.get(token)
            source_id = _token_id(tokenizer, source) if source else None
            for weight in matrices:
                # Mean over the rows that existed before: spare padding rows of real checkpoints included,
                # as they are part of the trained matrix.
                weight[new_id] = weight[source_id] if source_id is not None else weight[:old_rows].mean(dim=0)
            report[token] = source if source_id is not None else MEAN_ROW
    return report


def _last_state(input_ids: torch.Tensor, hidden: torch.Tensor, token_id: int, region: torch.Tensor,
                fallback: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """State at the last position in ``region`` whose id is ``token_id`` (else at ``fallback``), normalised."""
    hit = (input_ids == token_id) & region.bool()
    found = hit.any(dim=1)
    index = torch.where(found, last_token_index(hit), fallback)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return normalize(hidden[rows, index]), found


def _check(input_ids: torch.Tensor, hidden: torch.Tensor) -> None:
    if input_ids.dim() != 2 or hidden.dim() != 3 or hidden.shape[:2] != input_ids.shape:
        raise ValueError(f"input_ids (B, T) and hidden (B, T, H) must agree, got {tuple(input_ids.shape)} "
                         f"and {tuple(hidden.shape)}")


def gen_embedding(input_ids: torch.Tensor, hidden: torch.Tensor, prompt_length: int, gen_emb_id: int,
                  completion_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H) L2-normalised generative embeddings and (B,) bool ``found``.

    ``input_ids`` (B, T) is prompt (padded to ``prompt_length``, as ``generate`` returns it) + completion;
    ``hidden`` (B, T, H) the last-layer states of a forward pass over it; ``completion_mask``
    (B, T - prompt_length) marks real completion tokens (1) against padding after EOS (0), all ones if None.
    """
    _check(input_ids, hidden)
    batch, total = input_ids.shape
    if not 0 < prompt_length <= total:
        raise ValueError(f"prompt_length {prompt_length} must be in 1..{total}")
    if completion_mask is None:
        completion_mask = torch.ones(batch, total - prompt_length, dtype=torch.long, device=input_ids.device)
    if completion_mask.shape != (batch, total - prompt_length):
        raise ValueError(f"completion_mask must have shape {(batch, total - prompt_length)}, "
                         f"got {tuple(completion_mask.shape)}")
    region = torch.cat([torch.zeros(batch, prompt_length, dtype=torch.bool, device=input_ids.device),
                        completion_mask.bool()], dim=1)
    # Fallback: the last completion token; an empty completion falls back to the prompt's last position.
    fallback = torch.where(region.any(dim=1), last_token_index(region),
                           torch.full((batch,), prompt_length - 1, device=input_ids.device))
    return _last_state(input_ids, hidden, gen_emb_id, region, fallback)


def disc_embedding(input_ids: torch.Tensor, hidden: torch.Tensor, attention_mask: torch.Tensor,
                   disc_emb_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H) L2-normalised discriminative embeddings (last ``<disc_emb>`` of the prompt) and (B,) ``found``;
    rows without it fall back to the last attended token. Left or right padding alike."""
    _check(input_ids, hidden)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask must have shape {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}")
    return _last_state(input_ids, hidden, disc_emb_id, attention_mask, last_token_index(attention_mask))

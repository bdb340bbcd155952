"""Prompt templates as data: how each model family/style turns (instruction, visuals, text) into a prompt.

A released embedding model only reproduces its scores with its exact template and pooled token, so
each template records the token the embedding is read from (``pooled_token``); a unit test renders
every template through the tokenizer and checks that this token sits at the pooled position.

Visual inputs appear in the rendered text as ``<|vision_start|><|image_pad|><|vision_end|>`` (or
``<|video_pad|>``) spans, one per image or video; the encoder expands each pad into the visual's
token count. A template renders into (head, body, tail): only the body (user text) may be truncated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

IMAGE_SPAN = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO_SPAN = "<|vision_start|><|video_pad|><|vision_end|>"
# Where a piece of a rendered prompt came from (see PromptTemplate.render_parts).
TEMPLATE, USER, VISUAL = "template", "user", "visual"
_FIELD_RE = re.compile(r"(\{system\}|\{visuals\})")


@dataclass(frozen=True)
class PromptTemplate:
    """One embedding prompt style.

    ``layout`` has the fields {system}, {visuals} and {body}; ``{body}`` separates head from tail.
    ``instruction_in`` says where the task instruction goes: the system turn, or prepended to the
    user text (``body``). ``pooled_token`` is the text of the token whose hidden state is the
    embedding (None: the last token of the user text, no chat template).
    """

    name: str
    layout: str
    instruction_in: Literal["system", "body"]
    default_instruction: str
    padding_side: Literal["left", "right"]
    pooled_token: str | None
    source: str
    system_when_body: str = ""  # the fixed system prompt of templates whose instruction is in the body
    empty_text: str = ""  # text used when an item has neither text nor instruction text
    end_instruction_with_punct: bool = False
    instruction_separator: str = ""
    video_as_frames: bool = False  # RzenEmbed's released code feeds video frames as separate images

    def instruction(self, instruction: str | None) -> str:
        text = (instruction if instruction is not None else self.default_instruction).strip()
        if self.end_instruction_with_punct and text and not re.search(r"[.!?:;。]$", text):
            text += "."
        return text

    def render(self, text: str | None, visual_spans: list[str], instruction: str | None) -> tuple[str, str, str]:
        """Return (head, body, tail) strings; body is the truncatable user text."""
        parts, body, tail = self.render_parts(text, len(visual_spans), instruction)
        head = "".join(visual_spans[value] if kind == VISUAL else value for kind, value in parts)
        return head, body, tail

    def render_parts(self, text: str | None, num_visuals: int, instruction: str | None
                     ) -> tuple[list[tuple[str, str | int]], str, str]:
        """Like :meth:`render`, but the head stays in parts that say where each piece came from.

        Head parts are ``(TEMPLATE, text)``, ``(USER, text)`` or ``(VISUAL, index)``; the body is
        user text and the tail template text. The encoder tokenizes user text so that special-token
        strings in it stay plain text, and places visuals itself, so a request can never forge a
        control token or a visual placeholder.
        """
        inst = self.instruction(instruction)
        text = text or ""
        if self.instruction_in == "system":
            system: tuple[str, str] = (USER, inst)
            body = text
        else:
            system = (TEMPLATE, self.system_when_body)
            body = f"{inst}{self.instruction_separator}{text}" if inst else text
        if not body.strip() and not num_visuals and self.empty_text:
            body = self.empty_text
        head, tail = self.layout.split("{body}")
        parts: list[tuple[str, str | int]] = []
        for piece in _FIELD_RE.split(head):
            if piece == "{system}":
                parts.append(system)
            elif piece == "{visuals}":
                parts += [(VISUAL, i) for i in range(num_visuals)]
            elif piece:
                parts.append((TEMPLATE, piece))
        return parts, body, tail


TEMPLATES: dict[str, PromptTemplate] = {
    t.name: t for t in (
        PromptTemplate(
            name="rzen_embed",
            layout=("<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{visuals}{body}<|im_end|>\n"
                    "<|im_start|>assistant\n<|endoftext|>"),
            instruction_in="body",
            system_when_body="You are a helpful assistant.",
            default_instruction="",
            padding_side="right",
            pooled_token="<|endoftext|>",
            video_as_frames=True,
            source="360CVGroup/RzenEmbed rzen_embed_inference.py (instruction prepended to the user text, "
                   "<|endoftext|> appended after the assistant header, right padding)",
        ),
        PromptTemplate(
            name="rzen_embed_paper",
            layout=("<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{visuals}{body}<|im_end|>\n"
                    "<|im_start|>assistant\n<|endoftext|>"),
            instruction_in="body",
            system_when_body=("Given an image, summarize the provided image in one word. Given only text, "
                              "describe the text in one word."),
            default_instruction="",
            padding_side="right",
            pooled_token="<|endoftext|>",
            video_as_frames=True,
            source="RzenEmbed paper §3.4.4: the released layout (rzen_embed) with the paper's one-word "
                   "system prompt in place of 'You are a helpful assistant.'",
        ),
        PromptTemplate(
            name="qwen3_vl_embedding",
            layout=("<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{visuals}{body}<|im_end|>\n"
                    "<|im_start|>assistant\n"),
            instruction_in="system",
            default_instruction="Represent the user's input.",
            end_instruction_with_punct=True,
            empty_text="NULL",
            padding_side="right",
            pooled_token="\n",
            source="QwenLM/Qwen3-VL-Embedding qwen3_vl_embedding.py: instruction as system message, "
                   "apply_chat_template(add_generation_prompt=True), last attended token",
        ),
        PromptTemplate(
            name="vlm2vec",
            layout="{visuals}{body}",
            instruction_in="body",
            instruction_separator=" ",
            default_instruction="",
            padding_side="right",
            pooled_token=None,
            source="TIGER-AI-Lab/VLM2Vec processor.py: no chat template, '<image> instruction text', "
                   "last text token; vision start/end markers kept so M-RoPE finds the image",
        ),
        PromptTemplate(
            name="gve",
            layout=("<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{visuals}{body}<|im_end|>\n"
                    "<|im_start|>assistant\n"),
            instruction_in="system",
            default_instruction="You are a helpful assistant.",
            padding_side="left",
            pooled_token="\n",
            source="mteb GVEWrapper (Alibaba-NLP/GVE): instruction as system prompt, left padding, "
                   "last position",
        ),
    )
}

RERANK_SYSTEM = ('Judge whether the Document meets the requirements based on the Query and the Instruct '
                 'provided. Note that the answer can only be "yes" or "no".')
# Qwen3-VL-Reranker (examples/reranker_template.jinja): the tail is the assistant header, never cut.
RERANK_HEAD = f"<|im_start|>system\n{RERANK_SYSTEM}<|im_end|>\n<|im_start|>user\n"
RERANK_TAIL = "<|im_end|>\n<|im_start|>assistant\n"


def get_template(name: str) -> PromptTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown prompt template {name!r}; choose one of {sorted(TEMPLATES)}") from None

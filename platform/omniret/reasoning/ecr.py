"""The ECR record: a generation split into its thinking and its final summary.

A well-formed ECR is ``<think> ... </think> summary``. A generation that stops at the token limit
before ``</think>`` is kept, marked ``truncated``, with everything it wrote as the thinking and an
empty summary; one that stopped by itself without closing is kept the same way and marked
``unclosed``. Nothing is dropped: the caller decides whether to use such a record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from omniret.reasoning.templates import THINK_CLOSE, THINK_OPEN


@dataclass
class ECR:
    text: str  # the full reasoning text as the embedder reads it (assistant prefix included)
    think: str
    summary: str
    closed: bool  # </think> was written
    truncated: bool  # generation hit max_new_tokens before </think>
    new_tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


def parse_ecr(prefix: str, generated: str, *, hit_limit: bool, new_tokens: int) -> ECR:
    """Split ``prefix + generated`` (prefix: the assistant-turn opening, e.g. ``<think>\\n``)."""
    text = (prefix + generated).strip()
    body = text[len(THINK_OPEN):] if text.startswith(THINK_OPEN) else text
    think, sep, summary = body.partition(THINK_CLOSE)
    closed = bool(sep)
    if not closed:  # everything written is thinking; kept, flagged by the caller's record
        think, summary = body, ""
    return ECR(text=text, think=think.strip(), summary=summary.strip(), closed=closed,
               truncated=not closed and hit_limit, new_tokens=new_tokens)

"""Embedding prompts with reasoning: an item's ECR (``Item.reasoning``) rendered after its input.

Think-Then-Embed's embedder reads ``f(V, [Ins], T, ψ)`` (METHODS §7.1): the reasoning ψ follows the
input. :class:`ReasoningEncoder` is :class:`~omniret.models.encoding.InputEncoder` with the ECR
appended to the item's text (after a PDF page's text, too), so it lands in the truncatable body of
every template, before the template's tail: the pooled token and everything after the body stay as
they are. When the token budget is short, the end of the ECR is cut first. The paper does not say
how the ECR is joined to the input; a newline is our choice (``REASONING_SEPARATOR``).
"""

from __future__ import annotations

from omniret.items import Item
from omniret.models.encoding import InputEncoder, Visual

REASONING_SEPARATOR = "\n"


def text_with_reasoning(text: str, reasoning: str | None) -> str:
    """The user text followed by the reasoning (user text: the encoder tokenizes it with special-token
    strings split as plain text, so a reasoning can never forge a control token)."""
    reasoning = reasoning.strip() if reasoning else ""
    if not reasoning:
        return text
    return f"{text}{REASONING_SEPARATOR}{reasoning}" if text else reasoning


class ReasoningEncoder(InputEncoder):
    """InputEncoder that renders ``item.reasoning`` after the item's text."""

    def visuals_and_text(self, item: Item, name: str) -> tuple[list[Visual], str]:
        visuals, text = super().visuals_and_text(item, name)
        return visuals, text_with_reasoning(text, item.reasoning)

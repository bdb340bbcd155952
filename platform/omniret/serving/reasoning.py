"""Reasoning (Think-Then-Embed) on ``/v1/embeddings`` and ``/search``: the request fields, their checks,
and how a request's inputs get their embedding-centric reasoning (ECR).

``reasoning`` is one of

- ``none`` (default): the inputs are embedded as they are;
- ``provided``: the client sends the ECR of each input in ``reasoning_text`` (one string per input,
  in order; a single string for a single input). Each is at most ``serve.max_reasoning_chars``
  characters and is tokenized as plain text: control-token strings in it never become control tokens;
- ``generate``: the reasoner deployment (``serve.reasoner_enabled``; checkpoint and decoding from
  ``reason.*``) writes the ECR with the ``reason.template`` prompt (``auto``: ``retrieval``, as a
  request has no task group), and the response carries it back.

Either way the ECR becomes ``Item.reasoning``, which the embedder renders after the input
(:class:`omniret.models.reasoned.ReasoningEncoder`, TTE_t). Any embedder accepts it; it helps only one
trained with reasoning (``model.reasoning``), and an embedder trained without it gets an input it
never saw in training. The reranker in ``/search`` scores the query without the ECR.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from omniret.config import ReasonConfig, ServeConfig
from omniret.errors import MediaError
from omniret.items import Item
from omniret.reasoning.templates import ReasonTemplate, get_reason_template
from omniret.serving.backend import Backend, Outcome, _first_name, turns

ReasoningMode = Literal["none", "provided", "generate"]


def reasoning_field():
    return Field("none", description="none: embed the inputs as they are. provided: reasoning_text carries "
                 "the embedding-centric reasoning (ECR) of each input, rendered after it. generate: the "
                 "service's reasoner writes the ECR first (only when one is deployed); the response "
                 "returns it. Helps only an embedder trained with reasoning (TTE_t).")


def reasoning_text_field(per_input: bool = True):
    what = ("The ECR of each input, in order (a single string for a single input)" if per_input
            else "The query's ECR")
    return Field(None, description=f"{what}; only with reasoning=provided; at most "
                 "serve.max_reasoning_chars characters each, tokenized as plain text.")


def check_reasoning(mode: str, texts: str | list[str] | None, count: int, cfg: ServeConfig,
                    backend: Backend, param: str = "reasoning_text") -> list[str] | None:
    """The provided ECR texts, one per input, or None; refuses a field that cannot be used, by name.

    Runs before any input is decoded: these checks cost nothing.
    """
    from omniret.serving.api import InputError  # api imports this module for its fields

    if mode == "generate" and backend.reasoner_model_id is None:
        raise InputError("reasoning", "this service has no reasoner deployed (serve.reasoner_enabled); "
                                      "use none or provided")
    if mode != "provided":
        if texts is not None:
            raise InputError(param, "reasoning_text is read only with reasoning=provided")
        return None
    if texts is None:
        raise InputError(param, "reasoning=provided needs reasoning_text")
    listed = isinstance(texts, list)
    texts = texts if listed else [texts]
    if len(texts) != count:
        raise InputError(param, f"{len(texts)} reasoning texts for {count} inputs; give one per input")
    for i, text in enumerate(texts):
        where = f"{param}[{i}]" if listed else param
        if not text.strip():
            raise InputError(where, "empty reasoning text")
        if len(text) > cfg.max_reasoning_chars:
            raise InputError(where, f"longer than serve.max_reasoning_chars={cfg.max_reasoning_chars} "
                                    "characters", 413)
    return texts


async def attach_reasoning(mode: str, texts: list[str] | None, items: list[Item], backend: Backend,
                           cost: int = 0) -> list[dict] | None:
    """Set ``reasoning`` on ``items``; for ``generate``, returns what the reasoner wrote per item
    (``{"text", "truncated"}``: truncated when it hit ``reason.max_new_tokens`` before ``</think>``)."""
    if mode == "provided":
        for item, text in zip(items, texts or [], strict=True):
            item.reasoning = text
        return None
    if mode != "generate":
        return None
    written = (await backend.reason(items, cost)).unwrap()
    for item, ecr in zip(items, written, strict=True):
        item.reasoning = ecr["text"]
    return list(written)


def serve_template(cfg: ReasonConfig) -> ReasonTemplate:
    """The reasoner prompt of the service: ``reason.template``; ``auto`` picks ``retrieval`` because a
    request names no task group."""
    return get_reason_template("retrieval" if cfg.template == "auto" else cfg.template)


def reason_jobs(reasoner, template: ReasonTemplate, jobs: list[tuple[list[Item], int]], budget: int | None = None):
    """ECR for several requests' items, generated together; one Outcome per request (values: a list of
    ``{"text", "truncated"}``), whatever fails.

    Like :func:`omniret.serving.backend.embed_jobs`: turns of at most ``budget`` source pixels; an
    unreadable item fails its own request (400); an exception of a merged call is retried request by
    request, so only the request that causes it fails.
    """
    from omniret.reasoning.reasoner import Request  # torch and transformers: only in the reasoner replica

    def run(job_ids: list[int]) -> list[Outcome]:
        requests = [Request(item, template) for j in job_ids for item in jobs[j][0]]
        written = reasoner.generate(requests)
        outcomes, at = [], 0
        for j in job_ids:
            mine = written[at:at + len(jobs[j][0])]
            at += len(mine)
            failed = next((e for e in mine if isinstance(e, MediaError)), None)
            outcomes.append(Outcome.failed(failed) if failed is not None else
                            Outcome([{"text": e.text, "truncated": e.truncated} for e in mine]))
        return outcomes

    outcomes: list[Outcome | None] = [None] * len(jobs)
    groups = turns([job[1] for job in jobs], budget) if budget else [list(range(len(jobs)))]
    for group in groups:
        try:
            for j, outcome in zip(group, run(group), strict=True):
                outcomes[j] = outcome
        except Exception as exc:
            for j in group:  # find the request that breaks the merged call
                try:
                    outcomes[j] = run([j])[0] if len(group) > 1 else Outcome.failed(exc, _first_name(jobs[j][0]))
                except Exception as inner:
                    outcomes[j] = Outcome.failed(inner, _first_name(jobs[j][0]))
    return outcomes

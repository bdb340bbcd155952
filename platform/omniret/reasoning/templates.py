"""The reasoner's prompt templates, as data: one per task kind, chosen by a pair's task group.

Think-Then-Embed (METHODS §7.1) generates ECR from handwritten, task-specific prompts: step-by-step
reasoning for QA, a detailed description then a summary for visual documents, the referred object
and its context for grounding. The paper does not publish its prompts, so the wording here is ours;
retrieval and video prompts follow the same pattern. Every prompt asks for the same format,
``<think>...</think>`` then one summary line, and the assistant turn is opened with ``<think>`` so
that even a weak reasoner starts in the format.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from omniret.models.prompts import PromptTemplate

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

_FORMAT = ("Think inside <think> </think>, then write one line that summarises what a search for this "
           "input should find.")


@dataclass(frozen=True)
class ReasonTemplate:
    """One reasoner prompt: a system turn, the task prompt placed before the item's text, the task
    groups (omniret.data.schema.TASK_GROUPS) it serves, and the text that opens the assistant turn."""

    name: str
    system: str
    prompt: str
    tasks: tuple[str, ...]
    assistant_prefix: str = THINK_OPEN + "\n"

    def prompt_template(self) -> PromptTemplate:
        """The equivalent embedding-style template, so models.encoding assembles its tokens."""
        return PromptTemplate(
            name=f"reason_{self.name}",
            layout=("<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{visuals}{body}<|im_end|>\n"
                    "<|im_start|>assistant\n" + self.assistant_prefix),
            instruction_in="body", instruction_separator="\n", default_instruction=self.prompt,
            system_when_body=self.system, padding_side="left", pooled_token=None,
            source="omniret reasoning template (Think-Then-Embed style ECR prompt)")

    @property
    def id(self) -> str:
        """Name plus a digest of the wording: ECR written with other wording is another record."""
        text = "\x00".join((self.system, self.prompt, self.assistant_prefix))
        return f"{self.name}@{hashlib.sha256(text.encode()).hexdigest()[:8]}"

    def instruction(self, task_instruction: str | None) -> str:
        """The reasoner prompt, followed by the item's own task instruction when it has one."""
        if task_instruction and task_instruction.strip():
            return f"{self.prompt}\nTask: {task_instruction.strip()}"
        return self.prompt


_SYSTEM = "You write the reasoning that helps an embedding model represent the user's input."

TEMPLATES: dict[str, ReasonTemplate] = {t.name: t for t in (
    ReasonTemplate("qa", _SYSTEM, "Answer the question about the input step by step: find the relevant "
                   "objects, count or compare them, and state the answer. " + _FORMAT,
                   ("image_qa",)),
    ReasonTemplate("visdoc", _SYSTEM, "Describe the document page in detail: its title, sections, figures "
                   "and the facts it states; then summarise it. " + _FORMAT,
                   ("document_retrieval",)),
    ReasonTemplate("grounding", _SYSTEM, "Describe the referred object: its colour, shape, size and position, "
                   "and what surrounds it. " + _FORMAT,
                   ("image_grounding",)),
    ReasonTemplate("retrieval", _SYSTEM, "Describe what the input shows or says: the main objects, their "
                   "attributes, counts and relations. " + _FORMAT,
                   ("image_retrieval", "image_classification")),
    ReasonTemplate("video", _SYSTEM, "Describe the clip in order: what is there, what moves, where it goes "
                   "and what happens next. " + _FORMAT,
                   ("video_retrieval", "video_qa")),
)}


def get_reason_template(name: str) -> ReasonTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown reasoning template {name!r}; choose one of {sorted(TEMPLATES)}") from None


def template_for_task(task: str, default: str = "retrieval") -> ReasonTemplate:
    """The template serving ``task`` (a task group); ``default`` for unknown or empty task groups."""
    for template in TEMPLATES.values():
        if task in template.tasks:
            return template
    return get_reason_template(default)


def chosen_template(setting: str, task: str) -> ReasonTemplate:
    """The template ``reason.template`` gives an item of task group ``task`` (``auto``: by task group)."""
    return template_for_task(task) if setting == "auto" else get_reason_template(setting)

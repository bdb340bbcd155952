"""A generated multimodal benchmark a tiny model can learn on a CPU, and the demo corpus.

:func:`generate_benchmark` writes, for every task in :data:`TASKS`, training pairs (schema jsonl)
and an evaluation set in the MMEB layout (see :mod:`.layout`), plus ``eval/benchmark.json`` naming
each set's task group, meta-task and layout. The same settings give byte-identical files. Training
and evaluation are disjoint by construction (:mod:`.scenes`): evaluation queries are about
colour x shape combinations that no training item shows, and evaluation pictures use object sizes
training pictures never use.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

from omniret.config import SyntheticConfig
from omniret.data.synthetic import doc_tasks, image_tasks, video_tasks
from omniret.data.synthetic.common import Ctx, MediaWriter, TaskSpec
from omniret.data.synthetic.layout import write_eval, write_train
from omniret.data.synthetic.scenes import SceneMaker, split_combos
from omniret.data.synthetic.teacher import write_notes

TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("syn_cls_shape", "image_classification", "I-CLS", "local", image_tasks.classification("shape"),
             image_tasks.CLS_INSTRUCTIONS["shape"]),
    TaskSpec("syn_cls_color", "image_classification", "I-CLS", "local", image_tasks.classification("color"),
             image_tasks.CLS_INSTRUCTIONS["color"]),
    TaskSpec("syn_cls_count", "image_classification", "I-CLS", "local", image_tasks.classification("count"),
             image_tasks.CLS_INSTRUCTIONS["count"]),
    TaskSpec("syn_vqa", "image_qa", "I-QA", "local", image_tasks.question_answering,
             image_tasks.VQA_INSTRUCTION),
    TaskSpec("syn_t2i", "image_retrieval", "I-RET", "local", image_tasks.caption_retrieval,
             image_tasks.T2I_INSTRUCTION, image_tasks.IMAGE_INSTRUCTION),
    TaskSpec("syn_it2i", "image_retrieval", "I-RET", "local", image_tasks.composed_retrieval,
             image_tasks.IT2I_INSTRUCTION, image_tasks.IMAGE_INSTRUCTION),
    TaskSpec("syn_grounding", "image_grounding", "I-VG", "local", image_tasks.grounding,
             image_tasks.VG_INSTRUCTION, image_tasks.IMAGE_INSTRUCTION),
    TaskSpec("syn_t2v", "video_retrieval", "V-RET", "video", video_tasks.caption_to_video,
             video_tasks.T2V_INSTRUCTION, video_tasks.VIDEO_INSTRUCTION),
    TaskSpec("syn_video_qa", "video_qa", "V-QA", "local", video_tasks.direction_questions,
             video_tasks.VQA_INSTRUCTION),
    TaskSpec("syn_docs", "document_retrieval", "VD-Docs", "beir", doc_tasks.document_retrieval,
             doc_tasks.QUERY_INSTRUCTION, doc_tasks.PAGE_INSTRUCTION),
)
MANIFEST = "benchmark.json"


def generate_benchmark(out: str | Path, settings: SyntheticConfig | None = None) -> dict[str, Any]:
    """Write ``out/train`` and ``out/eval``; returns a summary (counts per dataset, held-out combinations).

    A folder previously written by this function is replaced; any other non-empty ``train`` or
    ``eval`` folder under ``out`` is an error, so nothing of the user's is deleted.
    """
    settings = settings or SyntheticConfig()
    out = Path(out)
    specs = _selected(settings.tasks)
    _clear(out)
    train_combos, held = split_combos(settings.seed, settings.held_out)
    summary: dict[str, Any] = {"train": {}, "eval": {}, "held_out": [list(c) for c in held],
                               "train_dir": str(out / "train"), "eval_dir": str(out / "eval")}
    manifest: dict[str, Any] = {"format": "omniret-benchmark/1", "settings": settings.model_dump(),
                                "held_out": summary["held_out"], "datasets": []}
    notes: dict[str, dict[str, Any]] = {"train": {}, "eval": {}}  # what each media file shows (teacher.py)
    for spec in specs:
        for split in ("train", "eval"):
            root = out / split
            global_pool = split == "eval" and spec.layout != "local"
            negatives = settings.train_negatives if split == "train" else (
                0 if global_pool else settings.candidates - 1)
            rng = random.Random(f"{settings.seed}/{spec.name}/{split}")
            size = settings.video_size if spec.task.startswith("video") else settings.image_size
            ctx = Ctx(rng, SceneMaker(rng, split, size, train_combos, held), MediaWriter(root, spec.name), split,
                      negatives, settings.video_size, settings.video_frames, settings.pages_per_doc)
            count = settings.train_per_task if split == "train" else settings.eval_queries
            examples = spec.build(ctx, count)
            notes[split].update(ctx.media.notes)
            if split == "train":
                summary["train"][spec.name] = write_train(root, spec, examples, settings.train_negatives)
                continue
            rel = write_eval(root, spec, examples, ctx.pool)
            summary["eval"][spec.name] = len(examples)
            manifest["datasets"].append({"name": spec.name, "task": spec.task, "meta_task": spec.meta_task,
                                         "layout": spec.layout, "path": rel,
                                         "query_instruction": spec.query_instruction,
                                         "candidate_instruction": spec.candidate_instruction})
    for split, split_notes in notes.items():
        write_notes(out / split, split_notes)
    (out / "eval" / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return summary


def _selected(names: list[str]) -> list[TaskSpec]:
    if not names:
        return list(TASKS)
    known = {t.name: t for t in TASKS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown generated dataset(s) {unknown}; choose from {sorted(known)}")
    return [known[n] for n in names]


def _clear(out: Path) -> None:
    ours = (out / "eval" / MANIFEST).is_file()
    for split in ("train", "eval"):
        folder = out / split
        if folder.exists() and any(folder.iterdir()):
            if not ours:
                raise FileExistsError(f"{folder} is not empty and was not written by the generator; "
                                      "choose another output folder")
            shutil.rmtree(folder)


def demo_corpus(folder: str | Path) -> list[Path]:
    """Write the demo corpus (scene pictures, 2 short videos, 2 PDFs) and ``corpus.json`` describing it."""
    from omniret.data.synthetic.demo import write_demo_corpus

    return write_demo_corpus(Path(folder))

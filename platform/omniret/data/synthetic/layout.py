"""Write generated examples to disk: training pairs as schema jsonl, evaluation sets in the MMEB layout.

- training: ``train/<dataset>.jsonl``, one :class:`~omniret.data.schema.Pair` per row, media under
  ``train/media/<dataset>/`` with paths relative to ``train/``;
- evaluation (paths relative to ``eval/``):
  - candidate-list tasks: ``eval/image-tasks/<dataset>.jsonl`` (``eval/video-tasks/`` for video
    questions) with the MMEB-V2 image fields ``qry_inst, qry_text, qry_img_path, tgt_inst,
    tgt_text[], tgt_img_path[]`` (plus ``qry_video_path``), the positive at index 0;
  - video retrieval: ``eval/video-tasks/<dataset>.jsonl`` rows ``video_id, caption, video``; the
    candidate pool is every video of the file;
  - document retrieval: BEIR ``eval/visdoc-tasks/<dataset>/{queries,corpus,qrels}.jsonl`` with
    corpus entries ``pdf`` + ``page`` and graded qrels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omniret.data.schema import Pair, Side, write_pairs
from omniret.data.synthetic.common import Example, TaskSpec


def write_train(root: Path, spec: TaskSpec, examples: list[Example], negatives: int) -> int:
    pairs = [Pair(ex.query, [ex.positive], ex.negatives[:negatives], dataset=spec.name, task=spec.task,
                  id=f"{spec.name}-{i:05d}", meta={k: v for k, v in ex.meta.items() if k != "qrels"})
             for i, ex in enumerate(examples)]
    return write_pairs(root / f"{spec.name}.jsonl", pairs)


def write_eval(root: Path, spec: TaskSpec, examples: list[Example], pool: list[Side]) -> str:
    """Write one evaluation set; returns its path relative to ``root``."""
    if spec.layout == "local":
        return _write_local(root, spec, examples)
    if spec.layout == "video":
        return _write_video(root, spec, examples)
    if spec.layout == "beir":
        return _write_beir(root, spec, examples, pool)
    raise ValueError(f"unknown layout {spec.layout!r}")


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def _write_local(root: Path, spec: TaskSpec, examples: list[Example]) -> str:
    folder = "video-tasks" if spec.task.startswith("video") else "image-tasks"
    rows = []
    for ex in examples:
        q, candidates = ex.query, [ex.positive, *ex.negatives]
        row = {"qry_inst": q.instruction or "", "qry_text": q.text or "",
               "qry_img_path": q.images[0] if q.images else "",
               "tgt_inst": candidates[0].instruction or "",
               "tgt_text": [c.text or "" for c in candidates],
               "tgt_img_path": [c.images[0] if c.images else "" for c in candidates]}
        if q.video is not None:
            row["qry_video_path"] = str(q.video.path)
        rows.append({**row, "meta": ex.meta})
    rel = f"{folder}/{spec.name}.jsonl"
    _write_jsonl(root / rel, rows)
    return rel


def _write_video(root: Path, spec: TaskSpec, examples: list[Example]) -> str:
    rows = [{"video_id": Path(str(ex.positive.video.path)).stem, "caption": ex.query.text,
             "video": str(ex.positive.video.path), "qry_inst": ex.query.instruction or "",
             "tgt_inst": ex.positive.instruction or "", "meta": ex.meta} for ex in examples]
    rel = f"video-tasks/{spec.name}.jsonl"
    _write_jsonl(root / rel, rows)
    return rel


def _write_beir(root: Path, spec: TaskSpec, examples: list[Example], pool: list[Side]) -> str:
    rel = f"visdoc-tasks/{spec.name}"
    folder = root / rel
    _write_jsonl(folder / "corpus.jsonl", [{"corpus-id": f"p{i:04d}", "pdf": str(side.page.path),
                                            "page": side.page.page} for i, side in enumerate(pool)])
    _write_jsonl(folder / "queries.jsonl", [{"query-id": f"q{i:04d}", "query": ex.query.text}
                                            for i, ex in enumerate(examples)])
    _write_jsonl(folder / "qrels.jsonl", [{"query-id": f"q{i:04d}", "corpus-id": f"p{page:04d}", "score": grade}
                                          for i, ex in enumerate(examples)
                                          for page, grade in sorted(ex.meta["qrels"].items())])
    return rel

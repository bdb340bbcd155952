"""Read MMEB-style evaluation sets (generated or real MMEB-V1/V2) and aggregate scores as MMEB does.

Layouts under an evaluation root (``eval.root``):

- ``benchmark.json`` (written by the generator) lists each dataset with its layout, path, task group
  and meta-task; otherwise datasets are discovered in the layout the MMEB download scripts leave
  (the ``vlm2vec_eval`` folder):
- ``image-tasks/``: one annotation file per dataset (``<name>.parquet|.jsonl``, or a ``<name>/``
  folder of shards, as a snapshot of ``ziyjiang/MMEB_Test_Instruct`` has it; ``eval.annotations``
  may point elsewhere) with the V2 fields ``qry_inst, qry_text, qry_img_path, tgt_inst, tgt_text[],
  tgt_img_path[]`` or the V1 fields (instruction inside ``qry_text``). Image paths resolve against
  the dataset's folder, ``image-tasks/`` and the root. The ``<|image_1|>`` placeholder is dropped.
  Each query ranks its own list; the positive is at index 0.
- ``video-tasks/``: ``<name>.jsonl|.parquet`` (or ``video-tasks/data/<name>.jsonl``). Rows with a
  ``caption`` and ``video`` / ``video_path`` / ``frame_dir`` / ``video_id`` are retrieval rows,
  ranked against the pool of every distinct video of the file; a ``video_id`` finds its frames in
  ``video-tasks/frames/<group>/<name>/<video_id>/``. Rows with ``tgt_text`` lists (and
  ``qry_video_path`` / ``qry_frame_dir`` / ``video_id``) or with ``options`` + ``answer`` are
  candidate-list rows. Moment-retrieval sets (V-MRET, :func:`read_moment_dataset`) rank each query's
  own clips: QVHighlight / Charades-STA rows (``query``, ``video_path``) find the query video in
  ``<frames>/<video>/query/`` and the clips in the other folders of ``<frames>/<video>/``, the
  positives named ``positive*``; MomentSeeker rows (``query``, ``input_frames``, ``positive_frames``,
  ``negative_frames``) name clips whose frames are in ``<frames>/video_frames/<path with / as _>/``
  and an optional query video (same place) or image (``<frames>/query_<file>``).
- ``visdoc-tasks/<name>/``: BEIR ``queries`` / ``corpus`` / ``qrels`` (see :mod:`omniret.data.beir`),
  ranked against the whole corpus with graded relevance.

Where both a visual-document split and its corrected ``-fixed`` version are found
(``catalog.FIXED_SPLITS``), only the ``-fixed`` one is read.

Aggregation (:func:`aggregate`) follows MMEB-V2: per-dataset score x 100, meta-task means, and
Image / Video / VisDoc / Overall as plain means over datasets, not over meta-tasks.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from omniret.config import EvalConfig
from omniret.data import catalog
from omniret.data.beir import is_beir_folder, load_beir
from omniret.data.catalog import DatasetInfo
from omniret.data.readers import DATA_SUFFIXES, data_files, iter_records, resolve_path
from omniret.data.schema import Side
from omniret.eval.dataset import EvalDataset
from omniret.items import VideoRef

log = logging.getLogger(__name__)

MANIFEST = "benchmark.json"
_PLACEHOLDER = re.compile(r"<\|image_\d+\|>|<image>|<\|video_\d+\|>")
DEFAULT_INSTRUCTIONS = {  # MMEB-V2 built-ins, for rows that do not carry their own
    "video": ("Find a video that contains the following visual content:",
              "Understand the content of the provided video."),
    "beir": ("Find a document image that matches the given query:",
             "Understand the content of the provided document image."),
}
MOMENT_INSTRUCTIONS = {  # MMEB-V2's built-ins of the moment-retrieval sets, by query kind
    "video": "Find the clip that corresponds to the described scene in the given video:",
    "text": "Find the clip that corresponds to the given text:",
    "image": "Select the video clip that aligns with the given text and image:",
    "segment": "Find the clip that corresponds to the given sentence and video segment:",
    "clip": "Understand the content of the provided video clip.",
}
_UNKNOWN = {"image-tasks": ("I-other", "image_retrieval"), "video-tasks": ("V-other", "video_retrieval"),
            "visdoc-tasks": ("VD-other", "document_retrieval")}


def load_datasets(cfg: EvalConfig) -> tuple[list[EvalDataset], list[str]]:
    """Every selected dataset of ``cfg.root``, and a note for each one that could not be read."""
    root = Path(cfg.root)
    if not root.is_dir():
        raise FileNotFoundError(f"evaluation root {root} is not a folder (generate one with `omniret generate`)")
    entries = _manifest_entries(root) if (root / MANIFEST).is_file() else discover(root, cfg.annotations)
    if cfg.datasets:
        wanted = {catalog.normalize(n) for n in cfg.datasets}
        missing = wanted - {catalog.normalize(e["name"]) for e in entries}
        if missing:
            raise FileNotFoundError(f"dataset(s) {sorted(missing)} not found under {root}; found "
                                    f"{sorted(e['name'] for e in entries)}")
        entries = [e for e in entries if catalog.normalize(e["name"]) in wanted]
    entries, skipped = _prefer_fixed_splits(entries)
    datasets = []
    for entry in entries:
        try:
            ds = read_entry(root, entry).head(cfg.max_queries)
        except (OSError, ValueError, KeyError) as exc:
            skipped.append(f"{entry['name']}: {exc}")
            log.warning("skipping dataset %s: %s", entry["name"], exc)
            continue
        if not ds.queries:
            skipped.append(f"{entry['name']}: no usable query ({len(ds.problems)} broken rows)")
            continue
        if ds.problems:
            log.warning("%s: skipped %d broken row(s), e.g. %s", ds.name, len(ds.problems), ds.problems[0])
        datasets.append(ds)
    return datasets, skipped


def _prefer_fixed_splits(entries: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Drop an original split whose ``-fixed`` version is also present (noted as skipped)."""
    names = {e["name"] for e in entries}
    superseded = {old for old, fixed in catalog.FIXED_SPLITS.items() if old in names and fixed in names}
    notes = [f"{name}: superseded by {catalog.FIXED_SPLITS[name]}" for name in sorted(superseded)]
    return [e for e in entries if e["name"] not in superseded], notes


def read_entry(root: Path, entry: dict[str, Any]) -> EvalDataset:
    info = catalog.info_for(entry["name"], entry.get("task"), entry.get("meta_task"))
    path = root / entry["path"]
    defaults = DEFAULT_INSTRUCTIONS.get(entry["layout"], (None, None))
    instructions = (entry.get("query_instruction") or defaults[0], entry.get("candidate_instruction") or defaults[1])
    if entry["layout"] == "beir":
        return read_beir_dataset(path, info, instructions)
    roots = [path.parent if path.is_file() else path, root / entry.get("media_root", "."), root]
    if entry["layout"] == "video":
        return read_video_dataset(path, info, roots, entry.get("frames"), instructions)
    if entry["layout"] == "moment":
        return read_moment_dataset(path, info, roots, entry.get("frames"), instructions)
    return read_local_dataset(path, info, roots, entry.get("frames"))


def discover(root: Path, annotations: str | None = None) -> list[dict[str, Any]]:
    """Datasets found in the MMEB download layout (see the module docstring)."""
    entries: list[dict[str, Any]] = []
    image_dir = Path(annotations) if annotations else root / "image-tasks"
    for name, path in _annotation_sources(image_dir):
        entries.append(_entry(name, "image-tasks", "local", path, root, media_root="image-tasks"))
    frames = _frame_dirs(root / "video-tasks" / "frames")
    for folder in (root / "video-tasks", root / "video-tasks" / "data"):
        for name, path in _annotation_sources(folder, files_only=True):
            entry = _entry(name, "video-tasks", "auto-video", path, root)
            entry["frames"] = str(frames.get(catalog.normalize(entry["name"]), "")) or None
            entries.append(entry)
    visdoc = root / "visdoc-tasks"
    for folder in sorted(visdoc.iterdir()) if visdoc.is_dir() else []:
        if folder.is_dir() and is_beir_folder(folder):
            entries.append(_entry(folder.name, "visdoc-tasks", "beir", folder, root))
    return entries


def _entry(name: str, group: str, layout: str, path: Path, root: Path, **extra: Any) -> dict[str, Any]:
    known = catalog.lookup(name)
    meta, task = (known.meta_task, known.task) if known else _UNKNOWN[group]
    if layout == "auto-video":
        layout = ("moment" if meta == "V-MRET" else
                  "video" if meta in ("V-RET",) or (not known and _looks_like_retrieval(path)) else "local")
    return {"name": known.name if known else name, "task": task, "meta_task": meta, "layout": layout,
            "path": str(path.relative_to(root) if path.is_relative_to(root) else path), **extra}


def _looks_like_retrieval(path: Path) -> bool:
    for _, row, _ in iter_records(path):
        return bool(row) and "caption" in row and "tgt_text" not in row
    return False


def _annotation_sources(folder: Path, files_only: bool = False) -> list[tuple[str, Path]]:
    if not folder.is_dir():
        return []
    found = []
    for child in sorted(folder.iterdir()):
        if child.is_file() and child.suffix in DATA_SUFFIXES:
            found.append((child.stem, child))
        elif not files_only and child.is_dir() and data_files(child):
            found.append((child.name, child))
    return found


def _frame_dirs(frames_root: Path) -> dict[str, Path]:
    """normalized dataset name -> its frames folder (``frames/<group>/<name>/``)."""
    if not frames_root.is_dir():
        return {}
    return {catalog.normalize(d.name): d for group in sorted(frames_root.iterdir()) if group.is_dir()
            for d in sorted(group.iterdir()) if d.is_dir()}


def _manifest_entries(root: Path) -> list[dict[str, Any]]:
    data = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    return list(data.get("datasets", []))


# ---- readers ---------------------------------------------------------------------------------------

def _clean(text: Any) -> str:
    return _PLACEHOLDER.sub("", text).strip() if isinstance(text, str) else ""


def _first_path(row: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = row.get(key)
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, dict):
            value = bytes(value["bytes"]) if value.get("bytes") else value.get("path")
        if value:
            return value
    return None


def _video_ref(row: dict[str, Any], keys: tuple[str, ...], roots: list[Path], frames: str | None) -> VideoRef | None:
    raw = _first_path(row, keys)
    if isinstance(raw, str):
        path = resolve_path(raw, roots)
        if Path(path).exists() or not frames:
            return VideoRef(path)
    vid = row.get("video_id")
    if frames and vid is not None and (Path(frames) / str(vid)).is_dir():
        return VideoRef(str(Path(frames) / str(vid)))
    return VideoRef(resolve_path(raw, roots)) if isinstance(raw, str) else None


def _image_side(path: Any, roots: list[Path], text: str | None, instruction: str | None) -> Side:
    images = [] if not path else [path if isinstance(path, bytes) else resolve_path(str(path), roots)]
    return Side(text=text or None, images=images, instruction=instruction or None)


def read_local_dataset(path: Path, info: DatasetInfo, roots: list[Path], frames: str | None = None) -> EvalDataset:
    """Candidate-list rows (MMEB V1 / V2 image fields, or ``options`` + ``answer``); positive at index 0."""
    ds = EvalDataset(info, source=str(path))
    for file in data_files(path):
        for number, row, reason in iter_records(file):
            where = f"{file}:{number}"
            try:
                if row is None:
                    raise ValueError(reason)
                query, candidates = _local_row(row, roots, frames)
            except (ValueError, TypeError, KeyError) as exc:
                ds.problems.append(f"{where}: {exc}")
                continue
            ds.add_local(f"q{len(ds.queries)}", query, candidates)
    return ds


def _local_row(row: dict[str, Any], roots: list[Path], frames: str | None) -> tuple[Side, list[Side]]:
    video = _video_ref(row, ("qry_video_path", "qry_frame_dir", "video_path", "frame_dir"), roots, frames)
    image = _first_path(row, ("qry_img_path", "qry_image_path"))
    text = row.get("qry_text", row.get("question"))
    query = _image_side(image, roots, _clean(text), _clean(row.get("qry_inst")))
    query.video = video
    if "options" in row:
        options = [_clean(o) for o in row["options"]]
        answer = row.get("answer")
        if isinstance(answer, str) and len(answer) == 1 and answer.isalpha() and answer not in options:
            answer = options[ord(answer.upper()) - ord("A")]
        if _clean(answer) not in options:
            raise ValueError(f"answer {answer!r} is not one of the options")
        options.insert(0, options.pop(options.index(_clean(answer))))
        return query, [Side(text=o) for o in options]
    texts = list(row.get("tgt_text") or [])
    paths = list(row.get("tgt_img_path") or [])
    if not texts and not paths:
        raise ValueError("no candidates (tgt_text / tgt_img_path)")
    inst = _clean(row.get("tgt_inst"))
    candidates = []
    for i in range(max(len(texts), len(paths))):
        text_i = _clean(texts[i]) if i < len(texts) else ""
        path_i = paths[i] if i < len(paths) else None
        if not text_i and not path_i:
            raise ValueError(f"candidate {i} has neither text nor image")
        candidates.append(_image_side(path_i, roots, text_i, inst))
    if not query.modality:
        raise ValueError("empty query")
    return query, candidates


def read_video_dataset(path: Path, info: DatasetInfo, roots: list[Path], frames: str | None,
                       instructions: tuple[str | None, str | None]) -> EvalDataset:
    """Caption -> video rows; the pool is every distinct video (by id) of the file."""
    ds = EvalDataset(info, source=str(path))
    for file in data_files(path):
        for number, row, reason in iter_records(file):
            video = None if row is None else _video_ref(row, ("frame_dir", "video_path", "video"), roots, frames)
            caption = _clean(row.get("caption")) if row else ""
            if video is None or not caption:
                ds.problems.append(f"{file}:{number}: {reason or 'needs a caption and a video'}")
                continue
            vid = str(row.get("video_id") or video.path)
            cand = ds.add_candidate(Side(video=video, instruction=_clean(row.get("tgt_inst")) or instructions[1]),
                                    cid=vid)
            ds.add_global(f"q{len(ds.queries)}", Side(text=caption, instruction=_clean(row.get("qry_inst"))
                                                      or instructions[0]), {cand: 1.0})
    return ds


def read_moment_dataset(path: Path, info: DatasetInfo, roots: list[Path], frames: str | None,
                        instructions: tuple[str | None, str | None]) -> EvalDataset:
    """V-MRET rows: each query ranks its own clips (several may be positive); see the module docstring."""
    ds = EvalDataset(info, source=str(path))
    for file in data_files(path):
        for number, row, reason in iter_records(file):
            try:
                if row is None:
                    raise ValueError(reason)
                if not frames:
                    raise ValueError("no frames folder (video-tasks/frames/video_mret/<name>/) for this set")
                reader = _moment_seeker_row if "positive_frames" in row else _moment_video_row
                query, clips, positives = reader(row, Path(frames), roots)
            except (ValueError, TypeError, KeyError, OSError) as exc:
                ds.problems.append(f"{file}:{number}: {exc}")
                continue
            query.instruction = instructions[0] or query.instruction
            for clip in clips:
                clip.instruction = instructions[1] or clip.instruction
            ds.add_local(f"q{len(ds.queries)}", query, clips, relevant=positives)
    return ds


def _folder(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise ValueError(f"{what} frames not found: {path}")
    return path


def _moment_video_row(row: dict[str, Any], frames: Path, roots: list[Path]) -> tuple[Side, list[Side], list[int]]:
    """QVHighlight / Charades-STA: the query is text + the whole video; clips are its other folders."""
    text = _clean(row.get("query"))
    video_path = row.get("video_path")
    if not text or not isinstance(video_path, str) or not video_path:
        raise ValueError("needs a query and a video_path")
    folder = _folder(frames / Path(video_path).stem, "video")
    query = Side(text=text, video=VideoRef(str(_folder(folder / "query", "query"))),
                 instruction=MOMENT_INSTRUCTIONS["video"])
    clips = sorted(d for d in folder.iterdir() if d.is_dir() and d.name != "query")
    positives = [i for i, d in enumerate(clips) if d.name.startswith("positive")]
    if not positives:
        raise ValueError(f"no positive clip under {folder}")
    return query, [Side(video=VideoRef(str(d)), instruction=MOMENT_INSTRUCTIONS["clip"]) for d in clips], positives


def _clip_folder(frames: Path, name: str) -> Path:
    return frames / "video_frames" / name.split(".mp4")[0].replace("/", "_")


def _moment_seeker_row(row: dict[str, Any], frames: Path, roots: list[Path]) -> tuple[Side, list[Side], list[int]]:
    """MomentSeeker: named positive and negative clips; the query is text, text + image or text + a segment."""
    text = _clean(row.get("query"))
    if not text:
        raise ValueError("empty query")
    source = str(row.get("input_frames") or "")
    if source.endswith(".mp4"):
        query = Side(text=text, video=VideoRef(str(_folder(_clip_folder(frames, source), "query video"))),
                     instruction=MOMENT_INSTRUCTIONS["segment"])
    elif source:
        image = frames / f"query_{source}"
        if not image.is_file():
            raise ValueError(f"query image not found: {image}")
        query = Side(text=text, images=[str(image)], instruction=MOMENT_INSTRUCTIONS["image"])
    else:
        query = Side(text=text, instruction=MOMENT_INSTRUCTIONS["text"])

    def names(key: str) -> list[str]:
        return [e["output_path"] if isinstance(e, dict) else str(e) for e in row.get(key) or []]

    positive, negative = names("positive_frames"), names("negative_frames")
    if not positive:
        raise ValueError("no positive clip")
    clips = [Side(video=VideoRef(str(_folder(_clip_folder(frames, n), "clip"))), instruction=MOMENT_INSTRUCTIONS["clip"])
             for n in [*positive, *negative]]
    return query, clips, list(range(len(positive)))


def read_beir_dataset(folder: Path, info: DatasetInfo, instructions: tuple[str | None, str | None]) -> EvalDataset:
    beir = load_beir(folder)
    ds = EvalDataset(info, source=str(folder), problems=[str(p) for p in beir.problems])
    for cid, side in beir.corpus.items():
        side.instruction = side.instruction or instructions[1]
        ds.add_candidate(side, cid=cid)
    for qid, text in beir.queries.items():
        graded = {ds._index[c]: g for c, g in beir.qrels.get(qid, {}).items() if g > 0 and c in ds._index}
        if not graded:
            ds.problems.append(f"{folder}: query {qid!r} has no relevant corpus entry")
            continue
        ds.add_global(qid, Side(text=text, instruction=instructions[0]), graded)
    return ds


# ---- aggregation -----------------------------------------------------------------------------------

def aggregate(scores: dict[str, float], infos: dict[str, DatasetInfo]) -> dict[str, Any]:
    """MMEB summary of per-dataset scores (already x 100): meta-task means and plain dataset means."""
    order = list(catalog.META_TASKS)
    metas: dict[str, list[float]] = {}
    for name, score in scores.items():
        metas.setdefault(infos[name].meta_task, []).append(score)
    meta_means = {m: float(np.mean(v)) for m, v in sorted(metas.items(), key=lambda kv: (
        order.index(kv[0]) if kv[0] in order else len(order), kv[0]))}
    out: dict[str, Any] = {"meta_tasks": meta_means, "counts": {}}
    for category in catalog.CATEGORIES:
        values = [s for n, s in scores.items() if infos[n].category == category]
        if values:
            out[category] = float(np.mean(values))
            out["counts"][category] = len(values)
    for split, flag in (("IND", True), ("OOD", False)):
        values = [s for n, s in scores.items() if infos[n].in_domain is flag]
        if values:
            out[split] = float(np.mean(values))
    if scores:
        out["Overall"] = float(np.mean(list(scores.values())))
        out["counts"]["Overall"] = len(scores)
    return out

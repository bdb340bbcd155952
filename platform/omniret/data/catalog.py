"""Known MMEB datasets: meta-task, category (Image / Video / VisDoc), task group and headline metric.

Names follow the MMEB-V2 evaluation configs (and MMEB-V1, whose 36 image datasets are the V2 image
set); lookups ignore case and punctuation, so the MMEB-train spelling ``ImageNet_1K`` finds
``ImageNet-1K``. The corrected visual-document splits ``ViDoSeek-page-fixed`` and
``MMLongBench-page-fixed`` are listed under VD-OOD and supersede their originals (:data:`FIXED_SPLITS`).
The seven RzenEmbed task groups have no video classification; label-picking video
sets (V-CLS) are filed under ``video_qa``, the closest group. Datasets that are not listed here (a
generated benchmark, a private set) carry their own meta-task in the benchmark manifest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: meta-task -> (category, task group, dataset names)
META_TASKS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "I-CLS": ("Image", "image_classification", (
        "ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397", "Place365", "ImageNet-A",
        "ImageNet-R", "ObjectNet", "Country211")),
    "I-QA": ("Image", "image_qa", (
        "OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W", "ScienceQA", "VizWiz",
        "GQA", "TextVQA")),
    "I-RET": ("Image", "image_retrieval", (
        "VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t", "MSCOCO_t2i", "MSCOCO_i2t", "NIGHTS",
        "WebQA", "FashionIQ", "Wiki-SS-NQ", "OVEN", "EDIS")),
    "I-VG": ("Image", "image_grounding", ("MSCOCO", "RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing")),
    "V-CLS": ("Video", "video_qa", ("Kinetics-700", "K700", "UCF101", "HMDB51", "SmthSmthV2", "SSv2",
                                    "Breakfast")),
    "V-QA": ("Video", "video_qa", ("Video-MME", "MVBench", "NExTQA", "EgoSchema", "ActivityNetQA")),
    "V-RET": ("Video", "video_retrieval", ("MSR-VTT", "MSVD", "DiDeMo", "VATEX", "YouCook2")),
    "V-MRET": ("Video", "video_retrieval", ("QVHighlight", "Charades-STA", "MomentSeeker")),
    "VD-ViDoRe-v1": ("VisDoc", "document_retrieval", (
        "ViDoRe_arxivqa", "ViDoRe_docvqa", "ViDoRe_infovqa", "ViDoRe_tabfquad", "ViDoRe_tatdqa",
        "ViDoRe_shiftproject", "ViDoRe_syntheticDocQA_artificial_intelligence",
        "ViDoRe_syntheticDocQA_energy", "ViDoRe_syntheticDocQA_government_reports",
        "ViDoRe_syntheticDocQA_healthcare_industry")),
    "VD-ViDoRe-v2": ("VisDoc", "document_retrieval", (
        "ViDoRe_esg_reports_human_labeled_v2", "ViDoRe_biomedical_lectures_v2",
        "ViDoRe_biomedical_lectures_v2_multilingual", "ViDoRe_economics_reports_v2",
        "ViDoRe_economics_reports_v2_multilingual", "ViDoRe_esg_reports_v2",
        "ViDoRe_esg_reports_v2_multilingual")),
    "VD-VisRAG": ("VisDoc", "document_retrieval", (
        "VisRAG_ArxivQA", "VisRAG_ChartQA", "VisRAG_MP-DocVQA", "VisRAG_SlideVQA", "VisRAG_InfoVQA",
        "VisRAG_PlotQA")),
    "VD-OOD": ("VisDoc", "document_retrieval", ("ViDoSeek-page", "ViDoSeek-doc", "MMLongBench-page",
                                                "MMLongBench-doc", "ViDoSeek-page-fixed",
                                                "MMLongBench-page-fixed")),
}

#: Corrected splits that replace their original (MMEB-V2 leaderboard; Qwen3-VL re-evaluated on them):
#: when both are present, only the "-fixed" one is scored, so VisDoc keeps its 24 datasets.
FIXED_SPLITS = {"ViDoSeek-page": "ViDoSeek-page-fixed", "MMLongBench-page": "MMLongBench-page-fixed"}

#: The 20 MMEB-V1 in-distribution datasets (those with MMEB-train data); the other 16 image sets are OOD.
V1_IND = frozenset({
    "ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397", "OK-VQA", "A-OKVQA", "DocVQA",
    "InfographicsVQA", "ChartQA", "Visual7W", "VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t",
    "MSCOCO_t2i", "MSCOCO_i2t", "NIGHTS", "WebQA", "MSCOCO"})

#: Default meta-task of each task group, for datasets not in the catalog.
GROUP_META_TASK = {"image_classification": "I-CLS", "image_qa": "I-QA", "image_retrieval": "I-RET",
                   "image_grounding": "I-VG", "document_retrieval": "VD-other", "video_retrieval": "V-RET",
                   "video_qa": "V-QA"}
CATEGORIES = ("Image", "Video", "VisDoc")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    meta_task: str
    category: str
    task: str
    metric: str  # "hit@1" for image and video sets, "ndcg_linear@5" for visual documents
    in_domain: bool | None = None  # MMEB-V1 IND / OOD, None when not an MMEB image set


def normalize(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_INDEX = {normalize(name): (name, meta) for meta, (_, _, names) in META_TASKS.items() for name in names}


def lookup(name: str) -> DatasetInfo | None:
    """The catalog entry of an MMEB dataset name (any spelling), or None.

    ViDoRe-v2 sets are also found by their folder names, which lack the ``ViDoRe_`` prefix
    (``visdoc-tasks/esg_reports_v2``).
    """
    found = _INDEX.get(normalize(name)) or _INDEX.get("vidore" + normalize(name))
    if found is None:
        return None
    canonical, meta = found
    category, task, _ = META_TASKS[meta]
    in_domain = (canonical in V1_IND) if category == "Image" else None
    return DatasetInfo(canonical, meta, category, task, metric_for(category), in_domain)


def info_for(name: str, task: str | None = None, meta_task: str | None = None) -> DatasetInfo:
    """Catalog entry, else one built from the task group (and optional meta-task) of a custom set."""
    known = lookup(name)
    if known is not None and meta_task is None:
        return known
    if task is None:
        raise ValueError(f"dataset {name!r} is not an MMEB dataset; its task group must be given")
    meta = meta_task or GROUP_META_TASK[task]
    category = category_of(meta)
    return DatasetInfo(name, meta, category, task, metric_for(category))


def category_of(meta_task: str) -> str:
    if meta_task.startswith(("VD", "VisDoc")):
        return "VisDoc"
    return "Video" if meta_task.startswith("V-") else "Image"


def metric_for(category: str) -> str:
    return "ndcg_linear@5" if category == "VisDoc" else "hit@1"

"""The demo: generate a small multimodal corpus, embed it, search it with text queries, rerank.

With no ``model.path`` it uses the tiny offline model, whose weights are random: the neighbours it
prints show the machinery working end to end (decode, patchify, embed, search, rerank), not
retrieval quality. Point ``model.path`` at a real Qwen-VL embedding checkpoint for meaningful results.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from omniret.config import OmniretConfig
from omniret.items import Item, PageRef, VideoRef

log = logging.getLogger(__name__)

QUERIES = ["a red circle", "a blue square moving right", "a report page about green triangles"]


def build_corpus(workdir: Path) -> list[tuple[str, Item]]:
    """Images, a video and a PDF under ``workdir`` (reused when present); returns (label, item) pairs."""
    from omniret.media import synth

    workdir.mkdir(parents=True, exist_ok=True)
    corpus: list[tuple[str, Item]] = []
    for shape, color in [("circle", "red"), ("square", "blue"), ("triangle", "green"), ("circle", "yellow")]:
        path = workdir / f"{color}_{shape}.png"
        if not path.exists():
            synth.draw_scene([{"shape": shape, "color": color, "x": 112, "y": 112, "size": 90}]).save(path)
        corpus.append((f"image  {path.name}", Item(images=[str(path)], name=path.name)))
    video = workdir / "blue_square_right.mp4"
    if not video.exists():
        synth.write_moving_video(video, shape="square", color="blue", direction="right")
    corpus.append((f"video  {video.name}", Item(video=VideoRef(str(video)), name=video.name)))
    pdf = workdir / "report.pdf"
    pages = ["Chapter one: red circles and their uses.", "Chapter two: green triangles in the field.",
             "Chapter three: yellow circles at dusk."]
    if not pdf.exists():
        synth.write_pdf(pdf, pages, title="Shapes report")
    corpus += [(f"pdf    {pdf.name} p{i + 1}", Item(page=PageRef(str(pdf), i), name=f"{pdf.name} page {i}"))
               for i in range(len(pages))]
    return corpus


def run_demo(cfg: OmniretConfig, workdir: Path, top_k: int = 3) -> int:
    from omniret.models.backbone import load_backbone
    from omniret.models.embedder import Embedder
    from omniret.models.reranker import Reranker

    started = time.perf_counter()
    corpus = build_corpus(Path(workdir))
    backbone = load_backbone(cfg.model)
    print(f"model: {backbone.path} ({backbone.family.name}, {backbone.device}, {backbone.dtype})"
          + ("  [tiny random weights: rankings are not meaningful]" if not cfg.model.path else ""))
    embedder = Embedder(backbone, cfg.media, cfg.embed, cfg.model.template, cfg.model.max_length)
    reranker = Reranker(backbone, cfg.media, cfg.rerank)
    docs = embedder.encode([item for _, item in corpus])
    queries = embedder.encode(QUERIES)
    print(f"embedded {len(corpus)} documents and {len(QUERIES)} queries into {docs.shape[1]} dims")
    for query, vector in zip(QUERIES, queries, strict=True):
        scores = docs @ vector
        best = np.argsort(-scores)[:top_k]
        rerank = reranker.score(query, [corpus[i][1] for i in best])
        print(f"\nquery: {query!r}")
        for rank, (i, r) in enumerate(zip(best, rerank, strict=True), start=1):
            print(f"  {rank}. cosine {scores[i]:+.4f}  rerank {r:.4f}  {corpus[i][0]}")
    print(f"\ndone in {time.perf_counter() - started:.1f} s")
    return 0

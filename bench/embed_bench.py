"""Embedding throughput per modality and model size: token-budget batches vs one item at a time.

Run: .venv/bin/python bench/embed_bench.py [--presets tiny 30m 150m] [--repeats 3] [--threads 1]
Both paths include decoding (image load, video sampling, PDF rendering) and patchifying, since that
is what a caller pays; the ratio isolates what batching buys. Both run in this process with the same
torch threads. Models: random offline models of omniret.models.tiny.PRESETS.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from presets import describe, preset_overrides  # bench/ is on sys.path when a bench script runs
from report import snapshot, write_section

from omniret.config import load_config
from omniret.items import Item, PageRef, VideoRef
from omniret.media import synth
from omniret.models.embedder import Embedder


def corpus(root: Path) -> dict[str, list[Item]]:
    colors, shapes = list(synth.COLORS), list(synth.SHAPES)
    images, videos = [], []
    for i in range(32):
        path = root / f"img{i}.png"
        synth.draw_scene([{"shape": shapes[i % 3], "color": colors[i % len(colors)], "x": 112, "y": 112,
                           "size": 40 + i}]).save(path)
        images.append(Item(images=[str(path)]))
    for i in range(16):
        path = synth.write_moving_video(root / f"vid{i}.mp4", shape=shapes[i % 3], color=colors[i % len(colors)],
                                        direction=synth.DIRECTIONS[i % 4], num_frames=16, size=(112, 112), fps=8)
        videos.append(Item(video=VideoRef(str(path))))
    pdf = synth.write_pdf(root / "doc.pdf", [f"page {i} about {colors[i % len(colors)]} shapes" for i in range(16)])
    words = "red green blue circle square triangle moving left right up down small large".split()
    texts = [" ".join(words[(i + j) % len(words)] for j in range(4 + i % 9)) for i in range(64)]
    return {"text": [Item(text=t) for t in texts], "image": images, "video": videos,
            "pdf page": [Item(page=PageRef(str(pdf), i)) for i in range(16)]}


def rate(fn, n: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return n / statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "30m", "150m"],
                        help="model presets (omniret.models.tiny.PRESETS)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads of both paths")
    parser.add_argument("--title", default="Embedding throughput, by model size",
                        help="section of docs/BENCHMARKS.md to (re)write")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model.tiny_family=qwen3_vl")
    args = parser.parse_args(argv)
    before = snapshot()
    torch.set_num_threads(args.threads)
    rows = ["| model | modality | items | batched items/s | one-by-one items/s | batched / one-by-one |",
            "| --- | --- | ---: | ---: | ---: | ---: |"]
    with tempfile.TemporaryDirectory() as tmp:
        items_by_modality = corpus(Path(tmp))
        for preset in args.presets:
            cfg = load_config(None, ["embed.progress=false", *preset_overrides(preset), *args.overrides])
            embedder = Embedder.from_config(cfg)
            model = describe(preset, embedder.backbone.path)
            for modality, items in items_by_modality.items():
                embedder.encode(items[:2])  # warm-up: first-call allocations and lazy imports
                batched = rate(lambda e=embedder, items=items: e.encode(items), len(items), args.repeats)
                single = rate(lambda e=embedder, items=items: [e.encode([it]) for it in items], len(items),
                              args.repeats)
                rows.append(f"| {model} | {modality} | {len(items)} | {batched:.1f} | {single:.1f} | "
                            f"{batched / single:.2f}x |")
                print(rows[-1], flush=True)
    body = (f"Random {cfg.model.tiny_family} models of the presets listed, fp32, {args.threads} torch thread(s) for "
            f"both paths, `embed.batch_tokens={cfg.embed.batch_tokens}`, images 224 px, videos 16 frames at 112 px "
            f"sampled to {cfg.media.video_frames}, PDF pages at {cfg.media.pdf_dpi} dpi. Median of {args.repeats} "
            "runs; decoding included.\n\n" + "\n".join(rows))
    command = "python " + shlex.join(["bench/embed_bench.py", *(argv if argv is not None else sys.argv[1:])])
    write_section(args.title, command, body, before=before)


if __name__ == "__main__":
    main()

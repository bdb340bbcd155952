"""Ingestion throughput: the Ray Data pipeline vs a plain loop in one process, across model sizes.

Run: .venv/bin/python bench/ingest_bench.py [--presets tiny 30m 150m] [--repeats 2]

The same generated mixed corpus (images, PDF pages, video clips) is ingested into fresh tables through
the Ray Data graph (``run_ingest``) and through a plain loop that calls the same stage functions one
after another in this process. Both include decoding, the model load, the embedding, the writes and
index maintenance; Ray's own start-up is measured separately. Like with like: the plain loop runs torch
with as many threads as the Ray embedder actor reserves CPUs (``ingest.embed_cpus``, checked with an
actor and recorded), and Ray gets ``--ray-cpus`` CPUs in all. Vector search at scale is
bench/index_bench.py.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
from presets import describe, preset_overrides  # bench/ is on sys.path when a bench script runs
from report import local_ray, ray_threads, snapshot, write_section

from omniret.config import load_config
from omniret.index.store import IndexStore
from omniret.media import synth

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def write_corpus(root: Path, images: int, pdfs: int, videos: int) -> int:
    """A mixed corpus; returns how many items (images + pages + clips) it holds."""
    colors, shapes = list(synth.COLORS), list(synth.SHAPES)
    for i in range(images):
        # Position and size vary with i, so no two images share bytes (and ids).
        synth.draw_scene([{"shape": shapes[i % 3], "color": colors[i % len(colors)], "x": 40 + i % 48,
                           "y": 40 + (i // 48) * 6, "size": 30 + i % 7}], size=(128, 128)).save(root / f"img{i:03d}.png")
    for i in range(pdfs):
        synth.write_pdf(root / f"doc{i}.pdf", [f"document {i} page {p}: {colors[p % len(colors)]} shapes"
                                               for p in range(4)])
    for i in range(videos):
        synth.write_moving_video(root / f"vid{i}.mp4", shape=shapes[i % 3], color=colors[i % len(colors)],
                                 direction=synth.DIRECTIONS[i % 4], num_frames=32, size=(112, 112), fps=8)
    return images + 4 * pdfs + 2 * videos  # 4 s videos in 2 s clips


def plain_loop(cfg, root: Path) -> int:
    """The same stages, called one after another in this process; returns items written."""
    from omniret.ingest.embed import EmbedBatch, model_dim, model_tag
    from omniret.ingest.expand import expand_files
    from omniret.ingest.write import WriteBatch

    store = IndexStore(cfg.index, fresh=True)
    store.create(model_dim(cfg), model_tag(cfg))
    files = sorted(p for p in root.iterdir() if p.is_file())
    embed, write = EmbedBatch(cfg.model_dump(), model_tag(cfg)), WriteBatch(cfg.index.model_dump())
    written = 0
    for start in range(0, len(files), cfg.ingest.files_per_task):
        part = files[start : start + cfg.ingest.files_per_task]
        batch = pa.table({"uri": [str(p) for p in part], "size": [p.stat().st_size for p in part]})
        work = pa.concat_tables(expand_files(batch, media=cfg.media.model_dump(), index=cfg.index.model_dump(),
                                             thumbnail_px=cfg.ingest.thumbnail_px))
        result = write(embed(work))
        written += result["status"].to_pylist().count("written")
    store.maintain()
    return written


def bench_ingest(args) -> str:
    import ray
    import torch

    from omniret.ingest.pipeline import run_ingest
    from omniret.models.backbone import checkpoint_path

    rows = ["| model | path | items | seconds | items/s | vs plain loop |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    with tempfile.TemporaryDirectory(prefix="omniret-ingest-bench-") as tmp:
        root = Path(tmp) / "corpus"
        root.mkdir()
        items = write_corpus(root, args.images, args.pdfs, args.videos)
        started = time.perf_counter()
        local_ray(args.ray_cpus)
        ray_start = time.perf_counter() - started
        try:
            first = load_config(None, ["embed.progress=false", *args.overrides])
            actor_threads = ray_threads(first.ingest.embed_cpus)
            loop_threads = args.loop_threads or actor_threads
            torch.set_num_threads(loop_threads)
            # Warm-up, not timed: both paths once over one file of each kind, so that one-time costs (lazy imports,
            # Ray's worker processes) are not charged to whichever row happens to run first.
            warm = Path(tmp) / "warm"
            warm.mkdir()
            for pattern in ("img*", "doc*", "vid*"):  # one file of each kind: every decoder is imported
                for path in sorted(root.glob(pattern))[:1]:
                    (warm / path.name).write_bytes(path.read_bytes())
            warm_cfg = ["media.clip_seconds=2.0", "embed.progress=false", *args.overrides]
            plain_loop(load_config(None, [*warm_cfg, f"index.uri={tmp}/warm-loop"]), warm)
            run_ingest(load_config(None, [*warm_cfg, f"index.uri={tmp}/warm-ray"]), [str(warm)])
            for preset in args.presets:
                overrides = ["media.clip_seconds=2.0", "embed.progress=false", *preset_overrides(preset),
                             *args.overrides]
                model = describe(preset, checkpoint_path(load_config(None, overrides).model))  # builds it once
                loop_times, ray_times = [], []
                for run in range(args.repeats):
                    cfg = load_config(None, [*overrides, f"index.uri={tmp}/loop-{preset}-{run}"])
                    t0 = time.perf_counter()
                    assert plain_loop(cfg, root) == items
                    loop_times.append(time.perf_counter() - t0)
                    cfg = load_config(None, [*overrides, f"index.uri={tmp}/ray-{preset}-{run}"])
                    t0 = time.perf_counter()
                    summary = run_ingest(cfg, [str(root)])
                    ray_times.append(time.perf_counter() - t0)
                    assert summary.items_written == items, summary.format()
                    print(f"{preset} run {run}: loop {loop_times[-1]:.1f} s, ray data {ray_times[-1]:.1f} s",
                          flush=True)
                loop_s, ray_s = statistics.median(loop_times), statistics.median(ray_times)
                rows.append(f"| {model} | plain loop, one process | {items} | {loop_s:.1f} | {items / loop_s:.1f} | "
                            "1.00x |")
                rows.append(f"| {model} | Ray Data graph | {items} | {ray_s:.1f} | {items / ray_s:.1f} | "
                            f"{loop_s / ray_s:.2f}x |")
                print(rows[-2], rows[-1], sep="\n", flush=True)
        finally:
            ray.shutdown()
    return (f"Corpus: {args.images} PNG images 128 px, {args.pdfs} PDFs x 4 pages at 100 dpi, {args.videos} "
            f"videos of 4 s in 2 s clips (8 frames each): {items} items. Random qwen2_vl models of the presets "
            "listed, fp32 on CPU. Both paths decode, embed (token-budget batches), write to a fresh LanceDB table "
            f"and build its scalar/full-text indexes; median of {args.repeats} run(s), model load included. The "
            f"Ray Data graph runs on a local Ray of {args.ray_cpus} CPUs (decode tasks of 1 CPU, one embedder actor "
            f"of {first.ingest.embed_cpus:g} CPU, whose torch ran {actor_threads} thread(s) here); the plain loop "
            f"runs torch with {loop_threads} thread(s). Starting the local Ray instance (not included) took "
            f"{ray_start:.1f} s; both paths ran once, untimed, over one file of each kind first.\n\n" + "\n".join(rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "30m", "150m"],
                        help="model presets (omniret.models.tiny.PRESETS)")
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--pdfs", type=int, default=8)
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--loop-threads", type=int, default=None,
                        help="torch threads of the plain loop (default: those of the Ray embedder actor)")
    parser.add_argument("--title", default="Ingestion: Ray Data graph vs plain loop, by model size",
                        help="section of docs/BENCHMARKS.md to (re)write")
    parser.add_argument("overrides", nargs="*", help="config overrides of both paths")
    args = parser.parse_args(argv)
    before = snapshot()
    body = bench_ingest(args)
    print(body, flush=True)
    command = "python " + shlex.join(["bench/ingest_bench.py", *(argv if argv is not None else sys.argv[1:])])
    write_section(args.title, command, body, before=before)


if __name__ == "__main__":
    main()

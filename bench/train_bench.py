"""Training throughput (pairs/s) on Ray Train: 1 vs 2 workers, GradCache on vs off, equal global batch.

Run: .venv/bin/python bench/train_bench.py [--steps 40] [--batch 32] [--chunk 8]

Every configuration trains the tiny Qwen2-VL (all parameters) on the generated benchmark (written to a
temporary folder, 32 pairs per dataset) with the same global batch, on one local Ray with the machine's
CPUs split evenly between the workers (torch threads per worker as listed). Decoded items are
cached after their first use and the first half of the steps is a warm-up, so the figure is the
training step itself: the median over the second half of the steps of global pairs / step wall time
(encoding, GradCache passes or the plain step, gradient all-reduce, optimizer). Peak memory is the
largest resident set of rank 0.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
from pathlib import Path

from report import local_ray, snapshot, write_section  # bench/ is on sys.path when a bench script runs

# (workers, torch threads per worker, gradcache); the machine's 2 CPUs are reserved in every row
CONFIGS = [(1, 1, False), (1, 1, True), (1, 2, False), (2, 1, False), (2, 1, True)]


def measure(out: Path, bench: Path, workers: int, threads: int, gradcache: bool, args) -> dict:
    from omniret.config import load_config
    from omniret.training.trainer import fit

    cpus = max(1, (os.cpu_count() or 2) // workers)
    name = f"w{workers}-t{threads}-{'gc' if gradcache else 'plain'}"
    cfg = load_config(None, [
        f"data.train=[{bench / 'train'}]", "data.max_per_dataset=32", f"eval.root={bench / 'eval'}",
        f"train.output_dir={out}", f"train.name={name}", "train.mode=full", f"train.workers={workers}",
        f"train.cpus_per_worker={cpus}", f"train.torch_threads={threads}", f"train.batch_size={args.batch}", f"train.gradcache={str(gradcache).lower()}",
        f"train.query_chunk_size={args.chunk}", f"train.target_chunk_size={args.chunk}", f"train.max_steps={args.steps}",
        "train.checkpoint_every=0", "train.eval_at_end=false", "train.cache_mb=2048", "train.log_every=1000",
        "media.max_pixels=50176", "loss.temperature=0.05"])
    result = fit(cfg)
    with (result.run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    timed = rows[len(rows) // 2:]
    return {"workers": workers, "threads": threads, "gradcache": gradcache, "pairs_per_s": statistics.median(float(r["pairs_per_s"])
                                                                                          for r in timed),
            "step_s": statistics.median(float(r["step_s"]) for r in timed),
            "peak_mb": max(float(r["peak_mem_mb"]) for r in rows), "steps": len(rows)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=8)
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from omniret.config import SyntheticConfig
    from omniret.data.synthetic import generate_benchmark

    before = snapshot()
    local_ray(os.cpu_count() or 2)
    results = []
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        bench = Path(tmp) / "bench"
        generate_benchmark(bench, SyntheticConfig(train_per_task=32, eval_queries=2))
        for workers, threads, gradcache in CONFIGS:
            results.append(measure(Path(tmp) / "runs", bench, workers, threads, gradcache, args))
            print(results[-1], flush=True)
    ray.shutdown()
    base = results[0]["pairs_per_s"]
    lines = [f"Tiny Qwen2-VL, every parameter trained, InfoNCE (tau 0.05), global batch {args.batch} in every row "
             f"(GradCache chunks of {args.chunk}), generated benchmark (10 datasets x 32 pairs, homogeneous "
             f"batches), {args.steps} steps of which the second half is timed (median), decoded items cached. "
             "Every row reserves the machine's CPUs for its workers; torch threads per worker as listed. "
             "Ratios against 1 worker x 1 thread without GradCache. Memory: the largest resident set of rank 0 "
             "(absolute, from the trainer's metrics).", "",
             "| workers x threads | GradCache | pairs/s | s/step | x first row | peak RSS rank 0 (MB) |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in results:
        lines.append(f"| {r['workers']} x {r['threads']} | {'on' if r['gradcache'] else 'off'} | {r['pairs_per_s']:.1f} | "
                     f"{r['step_s']:.3f} | {r['pairs_per_s'] / base:.2f}x | {r['peak_mb']:.0f} |")
    body = "\n".join(lines)
    print(body)
    write_section("Training throughput on Ray Train (tiny model)",
                  f"python bench/train_bench.py --steps {args.steps} --batch {args.batch} --chunk {args.chunk}", body,
                  before=before)
    return 0


if __name__ == "__main__":
    sys.exit(main())

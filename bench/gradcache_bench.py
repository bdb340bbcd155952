"""GradCache vs the plain full-batch step: peak memory and step time across batch sizes (tiny model, CPU).

Run: .venv/bin/python bench/gradcache_bench.py [--batches 16 64 256 512] [--chunk 16]

Each (mode, batch size) runs in a fresh subprocess. Memory is measured from the current resident set:
after loading the model and building the inputs, the kernel's peak-RSS mark (VmHWM) is reset to the
current RSS (``/proc/self/clear_refs``), so the peak read after the steps minus the RSS read before
them is what the steps themselves added, not a peak left over from loading. Queries are short texts, targets
are small images (the vision tower runs), one hard negative per query; InfoNCE; LoRA on all linear
layers. Time is the median of ``--repeats`` steps after one warm-up step.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time

from report import snapshot, write_section  # bench/ is on sys.path when a bench script runs


def _status_mb(field: str) -> float:
    """VmRSS (current resident set) or VmHWM (its peak) of this process, in MiB (Linux)."""
    return int(re.search(rf"^{field}:\s+(\d+) kB", open("/proc/self/status").read(), re.M)[1]) / 1024


def reset_peak() -> float:
    """Reset the peak-RSS mark to the current RSS (Linux >= 4.0); returns the current RSS in MiB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mb("VmRSS")


def run_one(mode: str, batch: int, chunk: int, repeats: int) -> dict:
    """Measure one configuration in this process (called in a subprocess)."""
    import torch
    from PIL import Image

    from omniret.config import LoraConfig, load_config
    from omniret.items import Item
    from omniret.losses import build_loss
    from omniret.models import adapters
    from omniret.models.backbone import load_backbone
    from omniret.models.embedder import Embedder, EmbeddingModel
    from omniret.training.gradcache import GradCache

    torch.manual_seed(0)
    cfg = load_config(None, ["embed.progress=false"])
    backbone = load_backbone(cfg.model)
    backbone.model = adapters.attach_lora(backbone.model, LoraConfig(r=8, dropout=0.0))
    backbone.model.train()
    encoder = Embedder(backbone, cfg.media).encoder
    net = EmbeddingModel(backbone.model)
    colors = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
    queries = [encoder.encode(Item(text=f"a {colors[i % 8]} shape number {i} in the picture"))
               for i in range(batch)]
    targets = [encoder.encode(Item(images=[Image.new("RGB", (112, 112), colors[i % 8])])) for i in range(batch)]
    negatives = [encoder.encode(Item(text=f"not {colors[(i + 3) % 8]}")) for i in range(batch)]
    loss = build_loss("infonce")
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    collate = encoder.collate

    def full_step():
        q, t, n = net(collate(queries)), net(collate(targets)), net(collate(negatives))
        out = loss(q, t, n.view(batch, 1, -1))
        out.loss.backward()

    cache = GradCache(net, loss, collate, chunk, chunk)

    def cached_step():
        cache.step(queries, targets, negatives)

    step = full_step if mode == "full" else cached_step
    base = reset_peak()
    times = []
    for i in range(repeats + 1):
        optimizer.zero_grad(set_to_none=True)
        start = time.perf_counter()
        step()
        optimizer.step()
        if i:  # the first step is a warm-up
            times.append(time.perf_counter() - start)
    return {"mode": mode, "batch": batch, "peak_mb": _status_mb("VmHWM") - base, "step_s": statistics.median(times),
            "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64, 256, 512])
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", nargs=2, metavar=("MODE", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.chunk, args.repeats)))
        return
    before = snapshot()
    results = {}
    for batch in args.batches:
        for mode in ("full", "gradcache"):
            cmd = [sys.executable, __file__, "--one", mode, str(batch), "--chunk", str(args.chunk),
                   "--repeats", str(args.repeats)]
            line = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            results[mode, batch] = json.loads(line)
            print(results[mode, batch], flush=True)
    rows = ["| batch | full-batch step added MB | GradCache step added MB | full-batch s/step | GradCache s/step "
            "| time GradCache / full |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for batch in args.batches:
        full, cached = results["full", batch], results["gradcache", batch]
        rows.append(f"| {batch} | {full['peak_mb']:.0f} | {cached['peak_mb']:.0f} | {full['step_s']:.2f} | "
                    f"{cached['step_s']:.2f} | {cached['step_s'] / full['step_s']:.2f}x |")
    body = (f"Tiny Qwen2-VL + LoRA r=8, InfoNCE with 1 hard negative per query, queries = texts, targets = "
            f"112 px images, GradCache chunk size {args.chunk}. Memory: peak RSS during the steps minus the current "
            "RSS before them (peak mark reset first; fresh process per cell), torch threads "
            f"{results['full', args.batches[0]]['threads']}. The theoretical time floor of GradCache is about 1.33x (one extra forward "
            "per item on top of forward + backward).\n\n" + "\n".join(rows))
    command = "python bench/gradcache_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_section("GradCache vs full batch (tiny model)", command.strip(), body, before=before)


if __name__ == "__main__":
    main()

"""How often a UME-R1 checkpoint reasons, and what its generative embedding costs per item.

Run: .venv/bin/python bench/ume_reasoning_bench.py --eval .omniret/ume/bench/eval CHECKPOINT [CHECKPOINT ...]
     [--max-new-tokens 64] [--max-queries 16]

For every checkpoint: greedy generation (as ``eval.ume_modes=[gen]``) over the evaluation sets' queries,
the share of completions that reason (a non-empty ``<think>`` block, :func:`omniret.training.rl.adaptive.thinks`),
the mean reasoning tokens, the share with a ``<gen_emb>`` and seconds per item (wall time of generate +
read-out in this process). MMEmb-R1's adaptive policy should reason on fewer items and spend less time.
"""

from __future__ import annotations

import argparse
import time

from omniret.config import load_config
from omniret.eval.mmeb import load_datasets
from omniret.eval.ume import load_view
from omniret.training.rl import adaptive


def measure(checkpoint: str, eval_root: str, max_new_tokens: int, max_queries: int | None) -> dict[str, float]:
    cfg = load_config(None, [f"model.path={checkpoint}", f"eval.root={eval_root}", "media.max_pixels=50176"])
    cfg.eval.max_queries = max_queries
    view = load_view(cfg, "the checkpoint")
    datasets, _ = load_datasets(cfg.eval)
    items = [side.to_item(name=f"{ds.name} query {i}") for ds in datasets for i, side in enumerate(ds.queries)]
    started = time.perf_counter()
    out = view.generate(items, max_new_tokens=max_new_tokens)
    seconds = time.perf_counter() - started
    count = lambda text: len(view.backbone.tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    tokens = adaptive.reasoning_tokens(out.texts, count)
    return {"items": len(items), "share_reasoning": sum(map(adaptive.thinks, out.texts)) / max(len(items), 1),
            "reasoning_tokens": float(tokens.mean()) if len(items) else 0.0,
            "gen_emb_share": float(out.found.mean()) if len(items) else 0.0,
            "seconds_per_item": seconds / max(len(items), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--eval", required=True, help="evaluation root (MMEB layout)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-queries", type=int, default=None, help="queries per dataset")
    args = parser.parse_args()
    print("| checkpoint | items | share reasoning | reasoning tokens | <gen_emb> share | s / item |")
    print("|---|---:|---:|---:|---:|---:|")
    for checkpoint in args.checkpoints:
        m = measure(checkpoint, args.eval, args.max_new_tokens, args.max_queries)
        print(f"| {checkpoint} | {m['items']} | {m['share_reasoning']:.2f} | {m['reasoning_tokens']:.1f} | "
              f"{m['gen_emb_share']:.2f} | {m['seconds_per_item']:.3f} |")


if __name__ == "__main__":
    main()

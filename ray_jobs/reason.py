"""Write embedding-centric reasoning (ECR) for training pairs or evaluation sets with a reasoner.

    python ray_jobs/reason.py --pairs .omniret/benchmark/train reason.out=.omniret/reasoning
    ray job submit --working-dir . -- python ray_jobs/reason.py --config run.yaml \\
        reason.model.path=/models/Qwen2-VL-7B-Instruct reason.actors=4 reason.num_gpus=1

Re-running finishes an interrupted run: only records missing from ``<out>/ecr.jsonl`` are generated.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from omniret.errors import OmniretError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ray_jobs/reason.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="YAML run configuration")
    parser.add_argument("--pairs", action="append", type=Path, help="pair file or folder (default: reason.pairs)")
    parser.add_argument("--eval", type=Path, help="evaluation folder (default: reason.eval_root)")
    parser.add_argument("--teacher", action="store_true", help="teacher traces from the generator's notes")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="configuration overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from omniret.config import load_config
    from omniret.reasoning.job import apply_sources, run_reasoning, run_teacher

    try:
        run = run_teacher if args.teacher else run_reasoning
        summary = run(apply_sources(load_config(args.config, args.overrides), args.pairs, args.eval))
    except (OmniretError, FileNotFoundError) as exc:
        print(f"reason: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(summary.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

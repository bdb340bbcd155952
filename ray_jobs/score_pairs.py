"""Score training pairs with the reranker (teacher scores for distillation) and write the pairs back.

    python ray_jobs/score_pairs.py data.train=[.omniret/benchmark/train] score.out=.omniret/scored
    ray job submit --working-dir . -- python ray_jobs/score_pairs.py --config run.yaml score.ray=true score.actors=4

The reranker is the configured one (``Reranker.from_config``). Each pair gets ``teacher_scores``: the
reranker's yes-minus-no logits of its first positive and its negatives; pairs whose media cannot be
read are listed and left out. ``score.ray=true`` scores with a Ray Data actor pool.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from omniret.errors import OmniretError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ray_jobs/score_pairs.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="YAML run configuration")
    parser.add_argument("--out", type=Path, help="folder for the scored pair files (default: score.out)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="configuration overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from omniret.config import load_config
    from omniret.training.teacher_scores import score_pairs

    try:
        result = score_pairs(load_config(args.config, args.overrides), args.out)
    except (OmniretError, FileNotFoundError) as exc:
        print(f"score_pairs: error: {exc}", file=sys.stderr)
        return 2
    print(result.table())
    for error in result.errors:
        print(f"not scored: {error}", file=sys.stderr)
    print(f"scored pairs written to {result.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

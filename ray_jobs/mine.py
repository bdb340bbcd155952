"""Mine hard negatives for training pairs with a trained checkpoint and write the pairs back.

    python ray_jobs/mine.py --checkpoint .omniret/runs/stage1 data.train=[.omniret/benchmark/train] mine.out=.omniret/mined
    ray job submit --working-dir . -- python ray_jobs/mine.py --config run.yaml --checkpoint /runs/stage1 mine.ray=true

--checkpoint takes a run folder (its final/ model), a training checkpoint or an HF checkpoint folder;
without it ``model.*`` of the configuration is used. ``mine.method`` is skip_top (skip the top
``mine.skip_top`` ranks, keep ``mine.top_k``) or threshold (below the positive + ``mine.margin``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

# The sources this script came with (a submitted job's working_dir) before any installed omniret.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from omniret.errors import OmniretError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ray_jobs/mine.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="YAML run configuration")
    parser.add_argument("--checkpoint", type=Path, help="model to mine with (run folder or checkpoint)")
    parser.add_argument("--out", type=Path, help="folder for the mined pair files (default: mine.out)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="configuration overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from omniret.config import load_config
    from omniret.training.mining import mine
    from omniret.training.trainer import stage_model

    try:
        extra = stage_model(args.checkpoint) if args.checkpoint else []
        result = mine(load_config(args.config, [*args.overrides, *extra]), args.out)
    except (OmniretError, FileNotFoundError) as exc:
        print(f"mine: error: {exc}", file=sys.stderr)
        return 2
    print(result.table())
    print(f"mined pairs written to {result.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

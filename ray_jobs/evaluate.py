"""Evaluate a checkpoint on MMEB-layout data (the generated benchmark or real MMEB) and print the table.

    python ray_jobs/evaluate.py model.path=runs/stage2/checkpoint eval.root=.omniret/benchmark/eval eval.out=runs/eval
    ray job submit --working-dir . -- python ray_jobs/evaluate.py --config run.yaml eval.ray=true eval.actors=4

Inside ``ray job submit`` (RAY_ADDRESS set) the Ray Data path joins that cluster; otherwise it starts
a local Ray when the run is large (eval.ray=auto) or asked for (eval.ray=true).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

# The sources this script came with (a submitted job's working_dir) before any installed omniret.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from omniret.config import load_config
from omniret.errors import OmniretError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ray_jobs/evaluate.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="YAML run configuration")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="configuration overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from omniret.eval.report import markdown
    from omniret.eval.runner import run

    try:
        print(markdown(run(load_config(args.config, args.overrides))), end="")
    except (OmniretError, FileNotFoundError) as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train a stage, or a staged recipe, on Ray Train (a local Ray when no cluster is given).

    python ray_jobs/train.py --config ray_jobs/configs/quickstart.yaml
    python ray_jobs/train.py --config ray_jobs/configs/stage1.yaml --config ray_jobs/configs/stage2.yaml
    ray job submit --working-dir . -- python ray_jobs/train.py --config ray_jobs/configs/quickstart.yaml --root $PWD

Each --config is a run file (one stage) or a recipe file (a ``stages:`` list); stages run in order,
each starting from the previous one's output. At the end it prints one table per stage from the
stages' final evaluations (finished stages are not trained again, so a re-run only prints).
Trailing ``key=value`` overrides apply to every stage.
Under ``ray job submit`` the script runs in a copy of the sources: ``--root`` names the folder that
relative paths in the configuration (data, evaluation sets, runs) refer to.
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
    parser = argparse.ArgumentParser(prog="ray_jobs/train.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, action="append", required=True, help="run or recipe YAML (repeatable)")
    parser.add_argument("--root", type=Path, help="folder that relative paths in the configuration refer to")
    parser.add_argument("--local", action="store_true", help="train in this process, without Ray (one worker)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="configuration overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from omniret.training.recipe import load_stages, run_stages, stage_tables, summary_lines

    try:
        stages = load_stages(args.config, args.overrides, root=args.root)
        results = run_stages(stages, local=args.local)
    except (OmniretError, FileNotFoundError) as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(results)))
    print("\n" + stage_tables(stages, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

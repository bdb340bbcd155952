"""Ingest images, videos and PDFs into the LanceDB index with Ray Data.

    python ray_jobs/ingest.py --source /data/media [--prune] [--config ray_jobs/configs/ingest.yaml] [key=value ...]
    ray job submit --working-dir . -- python ray_jobs/ingest.py --config ray_jobs/configs/ingest.yaml

Inside ``ray job submit`` (RAY_ADDRESS set) it joins that cluster; otherwise it starts a local Ray.
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
from omniret.ingest.command import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ray_jobs/ingest.py", description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--config", type=Path, help="YAML run configuration")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="configuration overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args, load_config(args.config, args.overrides))
    except (OmniretError, FileNotFoundError) as exc:
        print(f"ingest: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Command-line arguments and entry of an ingest run, shared by ``omniret ingest`` and ray_jobs/ingest.py."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from omniret.config import OmniretConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", "-s", action="append", metavar="PATH|GLOB|URI|@LIST",
                        help="folder, file, glob (** recurses), s3:// / gs:// URI, or @file listing sources; "
                             "repeatable (default: ingest.sources)")
    parser.add_argument("--prune", action="store_true", default=None,
                        help="remove rows of files under the sources that no longer exist")
    parser.add_argument("--report", type=Path, help="also write the summary and every error as JSON here")


def run(args: argparse.Namespace, cfg: OmniretConfig) -> int:
    """Run the ingest, print its summary; the exit code is 0, 1 (nothing ingested) or 3 (a limit hit)."""
    from omniret.ingest.pipeline import run_ingest

    summary = run_ingest(cfg, args.source, prune=args.prune)
    print(summary.format(), flush=True)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary.exit_code()

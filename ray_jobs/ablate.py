"""Ablation in the shape of RzenEmbed's Table 3 on the generated benchmark: cumulative rows, several seeds.

    python ray_jobs/ablate.py --config ray_jobs/configs/ablation.yaml --seeds 0 1 2 --local
    python ray_jobs/ablate.py --config ray_jobs/configs/ablation.yaml --seeds 0 1 --out docs/ablation.md train.max_steps=100

Rows: InfoNCE, + hardness weighting, + false-negative masking, + task temperature, + system prompt,
+ resampling (omniret.training.ablation.ROWS). The config's last stage is the row template; earlier
stages are a shared start trained once. Prints (and with --out writes) the markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

# The sources this script came with (a submitted job's working_dir) before any installed omniret.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from omniret.errors import OmniretError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ray_jobs/ablate.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="ablation recipe YAML")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", type=int, help="only the first N rows")
    parser.add_argument("--root", type=Path, help="folder that relative paths in the configuration refer to")
    parser.add_argument("--local", action="store_true", help="train in this process, without Ray (one worker)")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) and the raw scores (json) here")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="overrides applied to every run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from omniret.training.ablation import ROWS, markdown_table, run_ablation, summarize
    from omniret.training.recipe import load_stages

    try:
        stages = load_stages([args.config], args.overrides, root=args.root)
        cells = run_ablation(stages, args.seeds, rows=ROWS[:args.rows] if args.rows else ROWS, local=args.local)
    except (OmniretError, FileNotFoundError) as exc:
        print(f"ablate: error: {exc}", file=sys.stderr)
        return 2
    table = markdown_table(summarize(cells))
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
        args.out.with_suffix(".json").write_text(json.dumps([vars(c) for c in cells], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

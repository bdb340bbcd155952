"""The ``omniret`` console script.

Every command takes ``--config FILE.yaml`` and trailing ``key.sub=value`` overrides, e.g.
``omniret embed --text "a red circle" model.path=/models/Qwen2-VL-2B embed.dimensions=256``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from omniret.config import OmniretConfig, load_config
from omniret.errors import OmniretError

Command = Callable[[argparse.Namespace, OmniretConfig], int]


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML run configuration")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="configuration overrides, e.g. model.path=/models/Qwen2-VL-2B")


def _items_from_args(args: argparse.Namespace):
    from omniret.items import Item, PageRef, VideoRef

    page = PageRef(args.pdf, args.page) if args.pdf else None
    video = VideoRef(args.video, args.start, args.end) if args.video else None
    return Item(text=args.text, images=list(args.image or []), video=video, page=page,
                instruction=args.instruction)


def _add_item_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--text")
    parser.add_argument("--image", action="append", help="image file (repeatable)")
    parser.add_argument("--video", help="video file")
    parser.add_argument("--start", type=float, help="clip start (seconds)")
    parser.add_argument("--end", type=float, help="clip end (seconds)")
    parser.add_argument("--pdf", help="PDF file")
    parser.add_argument("--page", type=int, default=0, help="0-based PDF page")
    parser.add_argument("--instruction")


def cmd_demo(args: argparse.Namespace, cfg: OmniretConfig) -> int:
    from omniret.demo import run_demo

    return run_demo(cfg, workdir=args.workdir, top_k=args.top_k)


def cmd_build_tiny(args: argparse.Namespace, cfg: OmniretConfig) -> int:
    from omniret.models.tiny import build_tiny_model

    out = build_tiny_model(args.out, family=args.family, seed=cfg.model.seed)
    print(f"tiny {args.family} checkpoint written to {out}")
    return 0


def cmd_embed(args: argparse.Namespace, cfg: OmniretConfig) -> int:
    from omniret.models.embedder import Embedder

    vector = Embedder.from_config(cfg).encode([_items_from_args(args)], progress=False)[0]
    print(json.dumps({"dimensions": len(vector), "embedding": [round(float(x), 6) for x in vector]}))
    return 0


def cmd_rerank(args: argparse.Namespace, cfg: OmniretConfig) -> int:
    from omniret.models.reranker import Reranker

    scores = Reranker.from_config(cfg).score(_items_from_args(args), args.document)
    ranked = sorted(zip(args.document, scores.tolist(), strict=True), key=lambda pair: -pair[1])
    for doc, score in ranked:
        print(f"{score:.4f}  {doc}")
    return 0


def cmd_soup(args: argparse.Namespace, cfg: OmniretConfig) -> int:
    from omniret.models.adapters import soup
    from omniret.models.backbone import checkpoint_path

    weights = args.weights or [1.0 / len(args.adapters)] * len(args.adapters)
    out = soup(checkpoint_path(cfg.model), args.adapters, weights, args.out)
    print(f"merged {len(args.adapters)} adapters into {out}")
    return 0


def cmd_config(args: argparse.Namespace, cfg: OmniretConfig) -> int:
    import yaml

    print(yaml.safe_dump(cfg.model_dump(), sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omniret", description=__doc__.splitlines()[0].strip("."))
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Command, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    p = add("demo", cmd_demo, "generate demo media, embed it with the configured (or tiny) model, search it")
    p.add_argument("--workdir", type=Path, default=Path(".omniret/demo"))
    p.add_argument("--top-k", type=int, default=3)
    _add_config_args(p)

    p = add("build-tiny", cmd_build_tiny, "write a tiny random Qwen-VL checkpoint (offline)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--family", choices=["qwen2_vl", "qwen2_5_vl", "qwen3_vl"], default="qwen2_vl")
    _add_config_args(p)

    p = add("embed", cmd_embed, "embed one item (text, images, video clip, PDF page) and print the vector")
    _add_item_args(p)
    _add_config_args(p)

    p = add("rerank", cmd_rerank, "score text documents against a query with the yes/no reranker")
    _add_item_args(p)
    p.add_argument("--document", action="append", required=True, help="document text (repeatable)")
    _add_config_args(p)

    p = add("soup", cmd_soup, "merge LoRA adapters by weighted sum of their deltas into one checkpoint")
    p.add_argument("--adapters", nargs="+", required=True)
    p.add_argument("--weights", nargs="+", type=float)
    p.add_argument("--out", type=Path, required=True)
    _add_config_args(p)

    p = add("config", cmd_config, "print the resolved configuration")
    _add_config_args(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-shard bars for a tiny checkpoint are noise
    try:
        cfg = load_config(args.config, args.overrides)
        return args.func(args, cfg)
    except (OmniretError, FileNotFoundError) as exc:
        print(f"omniret {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

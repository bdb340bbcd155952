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
DEFAULT_BENCHMARK = Path(".omniret/benchmark")  # eval.root defaults to its eval/ folder


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

    return run_demo(cfg, workdir=args.workdir, fast=args.fast, ui_port=args.ui_port,
                    exit_after_start=args.exit_after_start, rerank=args.rerank)


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


def cmd_merge(args: argparse.Namespace, cfg: OmniretConfig) -> int:
    from omniret.models.merge import merge_from_config

    flags = {"checkpoints": args.checkpoints, "adapters": args.adapters, "base": args.base, "method": args.method,
             "weights": args.weights, "density": args.density, "seed": args.seed, "out": args.out}
    # Flags override the merge section; validated like the section itself.
    flags = {k: json.loads(json.dumps(v, default=str)) for k, v in flags.items() if v is not None}
    cfg.merge = type(cfg.merge).model_validate({**cfg.merge.model_dump(), **flags})
    out = merge_from_config(cfg)
    print(f"merged ({cfg.merge.method}) into {out}")
    return 0


def cmd_train(args: argparse.Namespace, cfg: OmniretConfig) -> int:
    from omniret.training.recipe import load_stages, run_stages, summary_lines

    stages = load_stages(args.configs, args.overrides, root=args.root) if args.configs else [cfg]
    print("\n".join(summary_lines(run_stages(stages, local=args.local))))
    return 0


def cmd_mine(args: argparse.Namespace, cfg: OmniretConfig) -> int:
    from omniret.config import apply_overrides
    from omniret.training.mining import mine
    from omniret.training.trainer import stage_model

    if args.checkpoint:
        cfg = OmniretConfig.model_validate(apply_overrides(cfg.model_dump(), stage_model(args.checkpoint)))
    if args.source:
        cfg.data.train = [str(s) for s in args.source]
    result = mine(cfg, args.out)
    print(result.table())
    print(f"mined pairs written to {result.out}")
    return 0


def cmd_reason(args: argparse.Namespace, cfg: OmniretConfig) -> int:
    from omniret.reasoning.job import apply_sources, run_reasoning, run_teacher

    summary = (run_teacher if args.teacher else run_reasoning)(apply_sources(cfg, args.pairs, args.eval))
    print("\n".join(summary.lines()))
    return 0


def cmd_reason_facts(args: argparse.Namespace, cfg: OmniretConfig) -> int:
    from omniret.reasoning.facts import compare

    report = compare(args.teacher, args.student, args.teacher_reasoner, args.student_reasoner, args.roles)
    print("\n".join(report.lines()))
    if args.baseline:
        print("baseline, the teacher's most frequent ECR of each template for every item:")
        print("\n".join(compare(args.teacher, None, args.teacher_reasoner, roles=args.roles).lines()))
    return 0


def cmd_select_reasoning(args: argparse.Namespace, cfg: OmniretConfig) -> int:
    from omniret.training.rl.selection import run_selection

    if args.pairs:
        cfg.data.train = [str(p) for p in args.pairs]
    summary = run_selection(cfg, args.candidates, args.out, args.margin)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_balance(args: argparse.Namespace, cfg: OmniretConfig) -> int:
    import yaml

    from omniret.training.balancing import balance

    result = balance(cfg, samples=args.samples, k=args.clusters, eps=args.eps, temperature=args.temperature)
    print(f"{'group':32s} {'score':>7s} {'weight':>7s}")
    for name, row in sorted(result.items(), key=lambda kv: -kv[1]["weight"]):
        print(f"{name:32s} {row['score']:7.3f} {row['weight']:7.3f}")
    if args.out:
        weights = {name: round(row["weight"], 6) for name, row in result.items()}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(yaml.safe_dump({"data": {"weighting": "uniform", "weights": weights}}))
        print(f"weights written to {args.out} (use it as one more --config)")
    return 0


def cmd_score_pairs(args: argparse.Namespace, cfg: OmniretConfig) -> int:
    from omniret.training.teacher_scores import score_pairs

    if args.source:
        cfg.data.train = [str(s) for s in args.source]
    result = score_pairs(cfg, args.out)
    print(result.table())
    for error in result.errors:
        print(f"not scored: {error}", file=sys.stderr)
    print(f"scored pairs written to {result.out}")
    return 0 if any(k for _, k in result.datasets.values()) else 1


def cmd_ingest(args: argparse.Namespace, cfg: OmniretConfig) -> int:
    from omniret.ingest.command import run

    return run(args, cfg)


def cmd_search(args: argparse.Namespace, cfg: OmniretConfig) -> int:
    from omniret.search import run

    return run(args, cfg, _items_from_args(args))


def cmd_index(args: argparse.Namespace, cfg: OmniretConfig) -> int:
    from omniret.index.store import IndexStore

    store = IndexStore(cfg.index, fresh=True)
    if not args.status:
        for action in store.maintain(rebuild_vector=args.rebuild, optimize=args.optimize):
            print(action)
    print(json.dumps(store.index_status(), indent=2))
    return 0


def cmd_generate(args: argparse.Namespace, cfg: OmniretConfig) -> int:
    from omniret.data.synthetic import demo_corpus, generate_benchmark

    if args.demo_corpus:
        files = demo_corpus(args.demo_corpus)
        print(f"demo corpus: {len(files)} files under {args.demo_corpus}")
    if args.out or not args.demo_corpus:
        summary = generate_benchmark(args.out or DEFAULT_BENCHMARK, cfg.data.synthetic)
        print(f"train pairs ({summary['train_dir']}): " + ", ".join(f"{k} {v}" for k, v in summary["train"].items()))
        print(f"eval queries ({summary['eval_dir']}): " + ", ".join(f"{k} {v}" for k, v in summary["eval"].items()))
        print("held-out colour x shape combinations: " + ", ".join(" ".join(c) for c in summary["held_out"]))
    return 0


def cmd_eval(args: argparse.Namespace, cfg: OmniretConfig) -> int:
    from omniret.eval.report import markdown
    from omniret.eval.runner import run

    for key, value in (("root", args.root), ("out", args.out), ("datasets", args.dataset)):
        if value:
            setattr(cfg.eval, key, str(value) if isinstance(value, Path) else value)
    report = run(cfg)
    print(markdown(report), end="")
    return 0


def cmd_pairs(args: argparse.Namespace, cfg: OmniretConfig) -> int:
    from omniret.data.mixing import load_mixture

    if args.source:
        cfg.data.train = [str(s) for s in args.source]
    mixture, read = load_mixture(cfg.data)
    for problem in read.problems[: args.show]:
        print(f"skipped {problem}")
    print(read.summary())
    print(mixture.table())
    return 0


def cmd_serve(args: argparse.Namespace, cfg: OmniretConfig) -> int:
    from omniret.serving.app import run_local

    run_local(cfg, address=args.address)
    return 0


def cmd_k8s_serve_config(args: argparse.Namespace, cfg: OmniretConfig) -> int:
    from omniret.serving.k8s import run

    return run(args)


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

    p = add("demo", cmd_demo, "generate a corpus, train the demo model if missing, ingest, check the demo's "
                              "queries, serve the API and the Gradio app on 127.0.0.1 until Ctrl-C")
    p.add_argument("--workdir", type=Path, default=Path(".omniret/demo"))
    p.add_argument("--fast", action="store_true", help="skip training: use the untrained tiny model")
    p.add_argument("--ui-port", type=int, default=7860)
    p.add_argument("--exit-after-start", action="store_true", help="stop once everything answered (for tests)")
    p.add_argument("--rerank", action=argparse.BooleanOptionalAction, default=None,
                   help="also score the queries with the reranker (default: when a trained reranker is configured)")
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

    p = add("merge", cmd_merge, "merge checkpoints or LoRA adapters (linear, TIES, DARE) into one HF checkpoint")
    p.add_argument("--checkpoints", nargs="+", type=Path, help="full HF checkpoints (same architecture)")
    p.add_argument("--adapters", nargs="+", type=Path, help="LoRA adapters of one base (--base or model.path)")
    p.add_argument("--base", type=Path, help="common ancestor: needed by ties/dare for checkpoints")
    p.add_argument("--method", choices=["linear", "ties", "dare_linear", "dare_ties"], help="default: linear")
    p.add_argument("--weights", nargs="+", type=float, help="per model (default 1/n; 1 each for ties)")
    p.add_argument("--density", type=float, help="ties: fraction kept; dare: 1 - drop probability (default 1)")
    p.add_argument("--seed", type=int, help="dare: seed of the drop masks (default 0)")
    p.add_argument("--out", type=Path, help="output checkpoint folder (or merge.out)")
    _add_config_args(p)

    p = add("train", cmd_train, "train a stage or a staged recipe on Ray Train (--local: in this process)")
    p.add_argument("--config", dest="configs", type=Path, action="append",
                   help="run or recipe YAML (repeatable: stages run in order)")
    p.add_argument("--root", type=Path, help="folder that relative paths in the configuration refer to")
    p.add_argument("--local", action="store_true", help="train in this process, without Ray (one worker)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="overrides applied to every stage")
    p.set_defaults(config=None)

    p = add("mine", cmd_mine, "mine hard negatives for training pairs with a checkpoint; write the pairs back")
    p.add_argument("--checkpoint", type=Path, help="run folder, training checkpoint or HF checkpoint to mine with")
    p.add_argument("--source", action="append", type=Path, help="pair file or folder (default: data.train)")
    p.add_argument("--out", type=Path, help="folder for the mined pair files (default: mine.out)")
    _add_config_args(p)

    p = add("reason", cmd_reason, "write embedding-centric reasoning (ECR) for training pairs or evaluation "
            "sets with a reasoner (Ray Data actors; resumable)")
    p.add_argument("--pairs", action="append", type=Path, help="pair file or folder (default: reason.pairs)")
    p.add_argument("--eval", type=Path, help="evaluation folder, MMEB layout (default: reason.eval_root)")
    p.add_argument("--teacher", action="store_true", help="generated benchmark only: write teacher traces from "
                   "the generator's scene notes instead of running a reasoner")
    _add_config_args(p)

    p = add("reason-facts", cmd_reason_facts, "fact recall: the share of a teacher's ECR facts (colours, shapes, "
            "counts, positions, motion) that another reasoner's ECR states, matched by content and template")
    p.add_argument("--teacher", type=Path, required=True, help="the teacher's ECR folder or file")
    p.add_argument("--student", type=Path, required=True, help="the student's ECR folder or file")
    p.add_argument("--teacher-reasoner", help="only the teacher's records of this reasoner id")
    p.add_argument("--student-reasoner", help="only the student's records of this reasoner id")
    p.add_argument("--roles", nargs="+", default=["query", "target"], choices=["query", "target"],
                   help="records of these sides")
    p.add_argument("--baseline", action="store_true", help="also the recall of a reasoner that ignores its input "
                   "(the teacher's most frequent ECR of each template)")
    p.set_defaults(config=None, overrides=[])  # reads ECR files only: no configuration

    p = add("select-reasoning", cmd_select_reasoning, "MMEmb-R1 pair-aware selection: keep a sampled reasoning "
            "of each query only where it brings the positive closer under the current embedder (model); write "
            "the SFT traces (ecr.jsonl) and the decisions")
    p.add_argument("--candidates", nargs="+", type=Path, required=True,
                   help="ECR files or folders of candidate reasonings (e.g. one `omniret reason` run per seed)")
    p.add_argument("--pairs", action="append", type=Path, help="pair file or folder (default: data.train)")
    p.add_argument("--out", type=Path, required=True, help="folder for ecr.jsonl, selection.jsonl, summary.json")
    p.add_argument("--margin", type=float, default=0.0, help="keep a reasoning only when Delta > margin")
    _add_config_args(p)

    p = add("balance", cmd_balance, "sampling weights of the training groups from their embedding similarity "
            "to the evaluation sets (k-means + Sinkhorn + softmax)")
    p.add_argument("--samples", type=int, default=256, help="items embedded per group and per evaluation set")
    p.add_argument("--clusters", type=int, default=16, help="k-means centroids per set")
    p.add_argument("--eps", type=float, default=0.05, help="Sinkhorn regularisation")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature of the weights")
    p.add_argument("--out", type=Path, help="write {data: {weighting: uniform, weights: ...}} here")
    _add_config_args(p)

    p = add("score-pairs", cmd_score_pairs, "score each training pair's positive and negatives with the reranker "
            "(teacher scores for the distill loss); write the pairs back")
    p.add_argument("--source", action="append", type=Path, help="pair file or folder (default: data.train)")
    p.add_argument("--out", type=Path, help="folder for the scored pair files (default: score.out)")
    _add_config_args(p)

    p = add("ingest", cmd_ingest, "ingest images, videos and PDFs into the LanceDB index with Ray Data")
    from omniret.ingest.command import add_arguments as add_ingest_arguments

    add_ingest_arguments(p)
    _add_config_args(p)

    p = add("search", cmd_search, "search the index: a text, image, video or PDF-page query; vector or hybrid; "
            "rerank; filters; a table or JSON")
    from omniret.search import add_arguments as add_search_arguments

    _add_item_args(p)
    add_search_arguments(p)
    _add_config_args(p)

    p = add("index", cmd_index, "create missing indexes, build the vector index when due, optimize; print status")
    p.add_argument("--rebuild", action="store_true", help="(re)train the vector index now (>= 256 rows)")
    p.add_argument("--optimize", action="store_true", help="compact and bring every index up to date now")
    p.add_argument("--status", action="store_true", help="only print the index status")
    _add_config_args(p)

    p = add("generate", cmd_generate, "write the generated benchmark (train pairs + MMEB-layout eval sets) "
            "and/or the demo corpus")
    p.add_argument("--out", type=Path, help=f"benchmark folder: writes OUT/train and OUT/eval (default "
                   f"{DEFAULT_BENCHMARK} unless only --demo-corpus is given)")
    p.add_argument("--demo-corpus", type=Path, help="also write the demo corpus into this folder")
    _add_config_args(p)

    p = add("eval", cmd_eval, "evaluate the configured model (model.path=...) on MMEB-layout data and print "
            "the per-dataset table")
    p.add_argument("--root", type=Path, help="evaluation folder (default: eval.root)")
    p.add_argument("--out", type=Path, help="write report.json and report.md here (default: eval.out)")
    p.add_argument("--dataset", action="append", help="evaluate only this dataset (repeatable)")
    _add_config_args(p)

    p = add("pairs", cmd_pairs, "read training pairs (data.train), report broken rows, print the mixture")
    p.add_argument("--source", action="append", type=Path, help="pair file or folder (repeatable)")
    p.add_argument("--show", type=int, default=20, help="broken rows to list")
    _add_config_args(p)

    p = add("serve", cmd_serve, "serve /v1/embeddings, /v1/rerank and /search with Ray Serve until Ctrl-C")
    p.add_argument("--address", default="local", help="Ray address: local (start one) or auto/ray://...")
    _add_config_args(p)

    p = add("k8s-serve-config", cmd_k8s_serve_config, "regenerate each RayService's serveConfigV2 from the serve "
            "config (targets: k8s/serve-configs.yaml); with --config or overrides, print one")
    from omniret.serving.k8s import add_arguments as add_k8s_arguments

    add_k8s_arguments(p)
    _add_config_args(p)

    p = add("config", cmd_config, "print the resolved configuration")
    _add_config_args(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP call is noise here
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

"""/v1/embeddings latency with and without reasoning: reasoning=none, provided and generate.

Run: .venv/bin/python bench/reasoning_bench.py [--requests 1000] [--generate-requests 200] [--rounds 4]

One Serve application on a local Ray (2 logical CPUs) with the tiny models: an embedder replica
(1 CPU) and a reasoner replica (0.5 CPU, ``reason.max_new_tokens`` tokens, greedy), ``--threads``
torch threads each, on 127.0.0.1.
One client sends one request at a time, each one short text; ``provided`` adds a fixed ECR text
(``ECR`` below), ``generate`` has the reasoner write it first. The modes alternate in ``--rounds``
blocks, so a change in the shared machine's load falls on every mode alike; the load average is
recorded around each block. Latency is per request, end to end, from the client.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from report import write_section  # bench/ is on sys.path when a bench script runs

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

WORDS = "red green blue yellow circle square triangle moving left right up down small large".split()
ECR = ("<think>The input names a shape and its colour. The main object is a single circle; it is red, drawn "
       "in the middle of a plain background, with nothing around it.</think> A red circle on a plain "
       "background.")
MODES = ("none", "provided", "generate")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def payload(mode: str, i: int) -> dict:
    body = {"input": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(6)), "reasoning": mode,
            "encoding_format": "base64"}
    if mode == "provided":
        body["reasoning_text"] = ECR
    return body


def measure(http: httpx.Client, url: str, mode: str, start: int, count: int, truncated: list[bool]) -> list[float]:
    latencies = []
    for i in range(start, start + count):
        t0 = time.perf_counter()
        response = http.post(f"{url}/v1/embeddings", json=payload(mode, i))
        response.raise_for_status()
        latencies.append(time.perf_counter() - t0)
        if mode == "generate":
            truncated.append(response.json()["data"][0]["reasoning"]["truncated"])
    return latencies


def percentiles(latencies: list[float]) -> dict[str, float]:
    ms = np.asarray(latencies) * 1000
    return {"n": len(ms), "mean": float(ms.mean()), **{f"p{q}": float(np.percentile(ms, q)) for q in (50, 95, 99)}}


def commit() -> str:
    repo = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "platform", "bench"],
                           capture_output=True, text=True).stdout.strip()
    return f"{head}{' + uncommitted code changes' if dirty else ''}"


def main(argv: list[str] | None = None) -> None:
    import ray
    from ray import serve

    from omniret.config import load_config
    from omniret.serving.app import build_app, check_fits, pin_paths

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests of reasoning=none and of provided")
    parser.add_argument("--generate-requests", type=int, default=1000, help="requests of reasoning=generate")
    parser.add_argument("--rounds", type=int, default=4, help="alternating blocks per mode")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="reason.max_new_tokens of the reasoner")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every replica (OMP_NUM_THREADS)")
    args = parser.parse_args(argv)
    command = "python bench/reasoning_bench.py " + shlex.join(argv if argv is not None else sys.argv[1:])

    cfg = pin_paths(load_config(None, [
        "embed.progress=false", "serve.embedder.num_cpus=1", "serve.reranker.num_cpus=0", "serve.ingress.num_cpus=0",
        "serve.reasoner_enabled=true", "serve.reasoner.num_cpus=0.5", f"reason.max_new_tokens={args.max_new_tokens}"]))
    counts = {"none": args.requests, "provided": args.requests, "generate": args.generate_requests}
    latencies: dict[str, list[float]] = {m: [] for m in MODES}
    loads: list[float] = []
    truncated: list[bool] = []
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": str(args.threads)}})
    try:
        check_fits(cfg, ray.cluster_resources())
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"settings": cfg.model_dump()}), name="reasoning-bench", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=300) as http:
            for mode in MODES:  # warm up each path (the first generate call also builds the prompt encoder)
                measure(http, url, mode, 0, 3, [])
            for r in range(args.rounds):
                for mode in MODES:
                    block = counts[mode] // args.rounds + (r < counts[mode] % args.rounds)
                    loads.append(os.getloadavg()[0])
                    latencies[mode] += measure(http, url, mode, len(latencies[mode]), block, truncated)
                    print(mode, r, percentiles(latencies[mode]), f"load {os.getloadavg()[0]:.2f}", flush=True)
            loads.append(os.getloadavg()[0])
    finally:
        serve.shutdown()
        ray.shutdown()

    stats = {m: percentiles(latencies[m]) for m in MODES}
    base = stats["none"]["p50"]
    rows = ["| reasoning | requests | mean ms | p50 ms | p95 ms | p99 ms | p50 vs none |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for m in MODES:
        s = stats[m]
        rows.append(f"| {m} | {s['n']} | {s['mean']:.1f} | {s['p50']:.1f} | {s['p95']:.1f} | {s['p99']:.1f} | "
                    f"{s['p50'] / base:.2f}x |")
    body = (
        f"Commit {commit()}; {os.cpu_count()} cores shared with other work, 1-minute load average "
        f"{min(loads):.2f} to {max(loads):.2f} (median {statistics.median(loads):.2f}) over the run. One Serve "
        "application on a local Ray with 2 logical CPUs: the tiny Qwen2-VL embedder (1 replica, 1 CPU) and the "
        f"tiny reasoner (1 replica, 0.5 CPU), OMP_NUM_THREADS={args.threads} in each; the reasoner greedy "
        f"with reason.max_new_tokens={args.max_new_tokens}; one client, one "
        f"request at a time, each one short text; `provided` adds a {len(ECR)}-character ECR; the modes alternate in "
        f"{args.rounds} blocks. The reasoner's ECR hit max_new_tokens before `</think>` (truncated) in "
        f"{sum(truncated)} of {len(truncated)} `generate` requests.\n\n" + "\n".join(rows))
    if args.generate_requests < args.requests:
        body += (f"\n\n`generate` ran {args.generate_requests} requests, fewer than the others: each one generates up "
                 "to max_new_tokens tokens before it is embedded.")
    print(body, flush=True)
    write_section("Serving: latency with reasoning (tiny model)", command.strip(), body)


if __name__ == "__main__":
    main()

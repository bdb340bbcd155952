"""/v1/embeddings under concurrent clients: Ray Serve with dynamic batching vs batch size 1 vs a plain
single-process FastAPI + transformers server (the same routes over the in-process model).

Run: .venv/bin/python bench/serve_bench.py [--requests 96] [--concurrency 1 8 32]

Each request embeds one short text with the tiny model. All servers listen on 127.0.0.1; the client
is an asyncio httpx loop in this process, bounded in count. Latency is per request, end to end.

``--safety-cost REF`` instead measures what the input bounds and isolation cost: the plain server of
this tree against the same server of git ``REF`` (exported to a temporary folder), each in its own
process with the same torch threads, alternating, on requests of one short text and one small PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import threading
import time

import httpx
from report import write_section  # bench/ is on sys.path when a bench script runs

WORDS = "red green blue yellow circle square triangle moving left right up down small large".split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def text_payload(i: int) -> dict:
    return {"input": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(6))}


async def load(url: str, requests: int, concurrency: int, payload=text_payload) -> dict:
    latencies: list[float] = []
    queue = list(range(requests))

    async def client(http: httpx.AsyncClient) -> None:
        while queue:
            i = queue.pop()
            start = time.perf_counter()
            response = await http.post(f"{url}/v1/embeddings", json=payload(i))
            response.raise_for_status()
            latencies.append(time.perf_counter() - start)

    async with httpx.AsyncClient(timeout=120) as http:
        await http.post(f"{url}/v1/embeddings", json={"input": "warm up"})
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {"rps": requests / elapsed, "p50": statistics.median(latencies) * 1000,
            "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000}


def run_levels(url: str, requests: int, levels: list[int]) -> dict[int, dict]:
    return {c: asyncio.run(load(url, requests, c)) for c in levels}


def serve_variant(cfg, batch: int, requests: int, levels: list[int]) -> dict[int, dict]:
    from ray import serve

    from omniret.serving.app import build_app

    data = cfg.model_dump()
    data["serve"]["embedder"].update(max_batch_size=batch, num_cpus=1)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"settings": data}), name=f"bench{batch}", route_prefix="/")
    try:
        return run_levels(f"http://127.0.0.1:{port}", requests, levels)
    finally:
        serve.shutdown()


def plain_variant(cfg, requests: int, levels: list[int]) -> dict[int, dict]:
    import uvicorn

    from omniret.models.embedder import Embedder
    from omniret.serving.backend import LocalBackend
    from omniret.serving.routes import create_api

    app = create_api(LocalBackend(Embedder.from_config(cfg)), cfg)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        return run_levels(f"http://127.0.0.1:{port}", requests, levels)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def image_payload(i: int) -> dict:
    """One short text and one 64x64 PNG: exercises header probing, the pixel budget and decoding."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (i % 256, 80, 160)).save(buf, format="PNG")
    url = f"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"
    return {"input": [{"content": [{"type": "text", "text": text_payload(i)["input"]},
                                   {"type": "image_url", "image_url": {"url": url}}]}]}


def plain_server(port: int, threads: int) -> None:
    """Child process: the plain server of whichever omniret is first on PYTHONPATH."""
    import torch
    import uvicorn

    from omniret.config import load_config
    from omniret.models.embedder import Embedder
    from omniret.serving.backend import LocalBackend
    from omniret.serving.routes import create_api

    torch.set_num_threads(threads)
    cfg = load_config(None, ["embed.progress=false"])
    uvicorn.run(create_api(LocalBackend(Embedder.from_config(cfg)), cfg), host="127.0.0.1", port=port,
                log_level="warning")


def safety_cost(ref: str, requests: int, levels: list[int], threads: int, rounds: int
                ) -> dict[str, list[dict[int, dict]]]:
    """Alternate this tree's server and ``ref``'s, ``rounds`` times each; per run, figures per client count."""
    import os
    import subprocess
    import tempfile
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    results: dict[str, list[dict[int, dict]]] = {"this tree": [], ref: []}
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(repo), "archive", ref, "platform"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        sources = {"this tree": repo / "platform", ref: Path(tmp) / "platform"}
        for _ in range(rounds):
            for name, src in sources.items():
                port = free_port()
                env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{repo / 'bench'}"}
                child = subprocess.Popen([sys.executable, __file__, "--plain-server", str(port), "--threads",
                                          str(threads)], env=env, cwd=repo)
                try:
                    url = f"http://127.0.0.1:{port}"
                    for _ in range(600):
                        try:
                            if httpx.get(f"{url}/v1/models", timeout=5).status_code == 200:
                                break
                        except httpx.HTTPError:
                            time.sleep(0.2)
                    results[name].append({c: asyncio.run(load(url, requests, c, image_payload)) for c in levels})
                    print(name, results[name][-1], flush=True)
                finally:
                    child.terminate()
                    child.wait(30)
    return results


def main(argv: list[str] | None = None) -> None:
    import ray

    from omniret.config import load_config
    from omniret.serving.app import pin_paths

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--safety-cost", metavar="REF", help="compare this tree's plain server with git REF's")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each server (--safety-cost)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs per side (--safety-cost)")
    parser.add_argument("--plain-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plain_server:
        return plain_server(args.plain_server, args.threads)
    command = "python bench/serve_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.safety_cost:
        runs = safety_cost(args.safety_cost, args.requests, args.concurrency, args.threads, args.rounds)
        rows = ["| server | clients | run | requests/s | p50 ms | p99 ms |",
                "| --- | ---: | ---: | ---: | ---: | ---: |"]
        means = []
        for c in args.concurrency:
            for name, figures in runs.items():
                for i, levels in enumerate(figures, 1):
                    r = levels[c]
                    rows.append(f"| {name} | {c} | {i} | {r['rps']:.1f} | {r['p50']:.0f} | {r['p99']:.0f} |")
            mean = {name: statistics.mean(levels[c]["rps"] for levels in figures) for name, figures in runs.items()}
            means.append(f"{c} clients: this tree {mean['this tree']:.1f}, {args.safety_cost} "
                         f"{mean[args.safety_cost]:.1f} ({mean['this tree'] / mean[args.safety_cost]:.2f}x)")
        body = (f"{args.requests} requests per run and client count, each one short text and one 64x64 PNG "
                f"(data: URI); the plain one-process server ({args.threads} torch thread) of this tree, with "
                "the input bounds, header probing, parsing off the event loop and per-request isolation, "
                f"against the same server of `{args.safety_cost}` (before them), alternating.\n\n"
                + "\n".join(rows) + "\n\nMean requests/s, " + "; ".join(means) + ".")
        print(body, flush=True)
        write_section("Serving: what the input bounds cost (tiny model)", command.strip(), body)
        return
    cfg = pin_paths(load_config(None, ["embed.progress=false", "serve.reranker.num_cpus=0",
                                       "serve.ingress.num_cpus=0"]))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results = {"Serve, dynamic batching (max_batch_size 16)": serve_variant(cfg, 16, args.requests,
                                                                                 args.concurrency),
                   "Serve, batch size 1": serve_variant(cfg, 1, args.requests, args.concurrency)}
    finally:
        ray.shutdown()
    results["plain FastAPI + transformers, one process"] = plain_variant(cfg, args.requests, args.concurrency)
    base = results["plain FastAPI + transformers, one process"]
    rows = ["| server | clients | requests/s | p50 ms | p99 ms | requests/s vs plain |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, levels in results.items():
        for c, r in levels.items():
            rows.append(f"| {name} | {c} | {r['rps']:.1f} | {r['p50']:.0f} | {r['p99']:.0f} | "
                        f"{r['rps'] / base[c]['rps']:.2f}x |")
            print(rows[-1], flush=True)
    body = (f"{args.requests} requests per row, each one short text, tiny Qwen2-VL on CPU; one embedder "
            "replica (1 CPU) in the Serve rows. The plain server runs the same FastAPI routes over the model "
            "in its own process, one model call at a time.\n\n" + "\n".join(rows))
    write_section("Serving /v1/embeddings under load (tiny model)", command.strip(), body)


if __name__ == "__main__":
    main()

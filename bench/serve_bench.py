"""/v1/embeddings under concurrent clients: Ray Serve with dynamic batching vs batch size 1 vs a plain
single-process FastAPI + transformers server (the same routes over the in-process model).

Run: .venv/bin/python bench/serve_bench.py [--requests 96] [--concurrency 1 8 32]

Each request embeds one short text with the tiny model. All servers listen on 127.0.0.1; the client
is an asyncio httpx loop in this process, bounded in count. Latency is per request, end to end.
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


async def load(url: str, requests: int, concurrency: int) -> dict:
    latencies: list[float] = []
    queue = list(range(requests))

    async def client(http: httpx.AsyncClient) -> None:
        while queue:
            i = queue.pop()
            text = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(6))
            start = time.perf_counter()
            response = await http.post(f"{url}/v1/embeddings", json={"input": text})
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


def main(argv: list[str] | None = None) -> None:
    import ray

    from omniret.config import load_config
    from omniret.serving.app import pin_paths

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args(argv)
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
    command = "python bench/serve_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_section("Serving /v1/embeddings under load (tiny model)", command.strip(), body)


if __name__ == "__main__":
    main()

"""/v1/embeddings under concurrent clients: Ray Serve with dynamic batching vs batch size 1 vs a plain
single-process FastAPI + transformers server (the same routes over the model), across model sizes.

Run: .venv/bin/python bench/serve_bench.py [--requests 1000] [--concurrency 1 16] [--presets tiny 30m 150m]

Each request embeds one short text. Like with like: the plain server runs in its own process with
``--threads`` torch threads, and the Serve embedder replica reserves ``--threads`` CPUs, which Ray turns
into the same number of torch threads (the script checks this with an actor and records it). The load
generator is an asyncio httpx loop in this process for every server. All servers listen on 127.0.0.1.
Latency is per request, end to end; p99 is taken over ``--requests`` requests per row (at least 1000
for a p99 that is not the maximum).

Model sizes: ``--presets`` are random offline models of omniret.models.tiny.PRESETS (tiny: 0.25M
parameters; 30m; 150m), each built once under .omniret/models/<preset>.

``--safety-cost REF`` instead measures what the input bounds and isolation cost: the plain server of
this tree against the same server of git ``REF`` (exported to a temporary folder), each in its own
process with the same torch threads, alternating, on requests of one short text and one small PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from presets import describe, preset_overrides  # bench/ is on sys.path when a bench script runs
from report import local_ray, ray_threads, snapshot, write_section

WORDS = "red green blue yellow circle square triangle moving left right up down small large".split()
REPO = Path(__file__).resolve().parents[1]
PLAIN = "plain FastAPI + transformers, own process"


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
    results = {}
    for c in levels:
        results[c] = asyncio.run(load(url, requests, c))
        print(url, c, results[c], flush=True)
    return results


def serve_variant(cfg, batch: int, threads: int, requests: int, levels: list[int]) -> dict[int, dict]:
    from ray import serve

    from omniret.serving.app import build_app

    data = cfg.model_dump()
    data["serve"]["embedder"].update(max_batch_size=batch, num_cpus=threads)
    for attempt in range(3):
        port = free_port()
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(build_app({"settings": data}), name=f"bench{batch}", route_prefix="/")
            break
        except Exception as exc:  # a proxy that missed its start-up deadline on a loaded machine
            print(f"Serve did not start (attempt {attempt + 1}): {exc!r}"[:300], flush=True)
            serve.shutdown()
            if attempt == 2:
                raise
    try:
        return run_levels(f"http://127.0.0.1:{port}", requests, levels)
    finally:
        serve.shutdown()


@contextlib.contextmanager
def plain_process(src: Path, threads: int, overrides: list[str]):
    """The plain server of the omniret under ``src`` in a child process; yields its URL."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{REPO / 'bench'}"}
    child = subprocess.Popen([sys.executable, __file__, "--plain-server", str(port), "--threads", str(threads),
                              *overrides], env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(3000):
            if child.poll() is not None:
                raise RuntimeError(f"the plain server exited with code {child.returncode}")
            try:
                if httpx.get(f"{url}/v1/models", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url
    finally:
        child.terminate()
        child.wait(30)


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


def plain_server(port: int, threads: int, overrides: list[str]) -> None:
    """Child process: the plain server of whichever omniret is first on PYTHONPATH."""
    import torch
    import uvicorn

    from omniret.config import load_config
    from omniret.models.embedder import Embedder
    from omniret.serving.backend import LocalBackend
    from omniret.serving.routes import create_api

    torch.set_num_threads(threads)
    cfg = load_config(None, ["embed.progress=false", *overrides])
    uvicorn.run(create_api(LocalBackend(Embedder.from_config(cfg)), cfg), host="127.0.0.1", port=port,
                log_level="warning")


def safety_cost(ref: str, requests: int, levels: list[int], threads: int, rounds: int
                ) -> dict[str, list[dict[int, dict]]]:
    """Alternate this tree's server and ``ref``'s, ``rounds`` times each; per run, figures per client count."""
    import tempfile

    repo = REPO
    results: dict[str, list[dict[int, dict]]] = {"this tree": [], ref: []}
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(repo), "archive", ref, "platform"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        sources = {"this tree": repo / "platform", ref: Path(tmp) / "platform"}
        for _ in range(rounds):
            for name, src in sources.items():
                with plain_process(src, threads, []) as url:
                    results[name].append({c: asyncio.run(load(url, requests, c, image_payload)) for c in levels})
                print(name, results[name][-1], flush=True)
    return results


def compare_presets(args) -> str:
    """Serve (dynamic batching, batch size 1) and the plain server, per model preset; the table's body."""
    import ray

    from omniret.config import load_config
    from omniret.serving.app import pin_paths

    rows = ["| model | server | clients | requests/s | p50 ms | p99 ms | requests/s vs plain |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    # Serve's proxy readiness checks default to 5-10 s; a proxy starting on a loaded 2-core machine can miss
    # them and be killed. Longer deadlines here change start-up only, not the measured requests.
    for key in ("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S"):
        os.environ.setdefault(key, "120")
    local_ray(2)
    try:
        replica_threads = ray_threads(args.threads)
        for preset in args.presets:
            cfg = pin_paths(load_config(None, ["embed.progress=false", "serve.reranker.num_cpus=0",
                                               "serve.ingress.num_cpus=0", *preset_overrides(preset)]))
            model = describe(preset, cfg.model.path)
            results = {}
            with plain_process(REPO / "platform", args.threads, preset_overrides(preset)) as url:
                results[PLAIN] = run_levels(url, args.requests, args.concurrency)
            if "batched" in args.servers:
                results[f"Serve, dynamic batching (max_batch_size {args.batch})"] = serve_variant(
                    cfg, args.batch, args.threads, args.requests, args.concurrency)
            if "single" in args.servers:
                results["Serve, batch size 1"] = serve_variant(cfg, 1, args.threads, args.requests, args.concurrency)
            base = results[PLAIN]
            for name, levels in results.items():
                for c, r in levels.items():
                    rows.append(f"| {model} | {name} | {c} | {r['rps']:.1f} | {r['p50']:.0f} | {r['p99']:.0f} | "
                                f"{r['rps'] / base[c]['rps']:.2f}x |")
            print("\n".join(rows), flush=True)
    finally:
        ray.shutdown()
    return (f"{args.requests} requests per row (p99 over all of them), each one short text; random qwen2_vl models "
            f"of the presets listed, fp32 on CPU. One embedder replica reserving {args.threads} CPU(s) in the Serve "
            f"rows (a Ray actor reserving {args.threads} CPU(s) ran torch with {replica_threads} thread(s) here); the "
            f"plain server runs the same FastAPI routes over the model in its own process with {args.threads} torch "
            "thread(s), one model call at a time. The load generator (asyncio + httpx) runs in the benchmark's "
            "process for every server. Serve's HTTP proxy and ingress run in their own processes, as deployed."
            "\n\n" + "\n".join(rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--presets", nargs="+", default=["tiny", "30m", "150m"],
                        help="model presets (omniret.models.tiny.PRESETS)")
    parser.add_argument("--batch", type=int, default=16, help="max_batch_size of the dynamic-batching rows")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the plain server = CPUs of the Serve replica")
    parser.add_argument("--servers", nargs="+", default=["batched", "single"], choices=["batched", "single"],
                        help="Serve variants measured against the plain server (always measured)")
    parser.add_argument("--title", default="Serving /v1/embeddings under load, by model size",
                        help="section of docs/BENCHMARKS.md to (re)write")
    parser.add_argument("--safety-cost", metavar="REF", help="compare this tree's plain server with git REF's")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs per side (--safety-cost)")
    parser.add_argument("--plain-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)  # the plain server's config overrides
    args = parser.parse_args(argv)
    if args.plain_server:
        return plain_server(args.plain_server, args.threads, args.overrides)
    before = snapshot()
    command = "python " + shlex.join(["bench/serve_bench.py", *(argv if argv is not None else sys.argv[1:])])
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
        write_section("Serving: what the input bounds cost (tiny model)", command.strip(), body, before=before)
        return
    body = compare_presets(args)
    print(body, flush=True)
    write_section(args.title, command.strip(), body, before=before)


if __name__ == "__main__":
    main()

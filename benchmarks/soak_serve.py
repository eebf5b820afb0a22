"""Soak: 500 requests at 32 concurrent, streaming and not, with random client disconnects.

    python benchmarks/soak_serve.py --work /tmp/bench-serve

Goal (issue 13): 0 server errors (5xx, or an error chunk), 0 crashes (the process still answers /health
at the end), and resident memory within 10% of where it stood after warm-up. Each request asks for 8 to
96 tokens at temperature 0 or 0.8 (seeded); a quarter of the clients leave early: a stream after a few
chunks, a plain request by timing out. The server is `scratchlm serve` on llama-10m (see serve_load.py).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import free_port, ours_command, prepare_model, start_server  # noqa: E402

PROMPTS = ["ROMEO:", "First Citizen:\nBefore we proceed", "KING RICHARD III:\nNow is the winter", "O"]


async def one(client: httpx.AsyncClient, server, rng: random.Random, tally: dict) -> None:
    stream, leave = rng.random() < 0.5, rng.random() < 0.25
    body = {
        "model": server.model,
        "prompt": rng.choice(PROMPTS),
        "max_tokens": rng.randint(8, 96),
        "temperature": rng.choice([0.0, 0.8]),
        "seed": rng.randint(0, 1000),
        "stream": stream,
    }
    try:
        if stream:
            async with client.stream("POST", server.url + "/v1/completions", json=body) as r:
                tally[r.status_code // 100 * 100] = tally.get(r.status_code // 100 * 100, 0) + 1
                chunks, quit_after = 0, rng.randint(1, 5)
                async for line in r.aiter_lines():
                    if '"error"' in line:
                        tally["error chunks"] = tally.get("error chunks", 0) + 1
                    chunks += line.startswith("data: ")
                    if leave and chunks >= quit_after:
                        tally["left"] = tally.get("left", 0) + 1
                        return  # leaving the block closes the connection mid-stream
        else:
            timeout = rng.uniform(0.05, 0.5) if leave else 600
            r = await client.post(server.url + "/v1/completions", json=body, timeout=timeout)
            tally[r.status_code // 100 * 100] = tally.get(r.status_code // 100 * 100, 0) + 1
    except httpx.TimeoutException:
        tally["left"] = tally.get("left", 0) + 1


async def soak(server, total: int, concurrency: int, seed: int) -> dict:
    rng = random.Random(seed)
    tally: dict = {}
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency + 8)) as client:

        async def guarded():
            async with gate:
                await one(client, server, rng, tally)

        await asyncio.gather(*(guarded() for _ in range(total)))
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-serve"))
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the server (default: its choice)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    ours_dir, _ = prepare_model(args.work)
    port = free_port()
    server = start_server(
        ours_command(ours_dir, port, 16), "llama-10m", port, args.threads, args.work / "soak.log"
    )
    try:
        warm = asyncio.run(soak(server, 64, args.concurrency, seed=1))  # warm-up: allocator pools, imports
        rss_start = server.rss_mib()
        start = time.perf_counter()
        tally = asyncio.run(soak(server, args.requests, args.concurrency, seed=2))
        seconds = time.perf_counter() - start
        time.sleep(1.0)  # let the last abandoned rows go
        rss_end = server.rss_mib()
        alive = server.proc.poll() is None and httpx.get(server.url + "/health", timeout=5).status_code == 200
        metrics = httpx.get(server.url + "/metrics", timeout=5).text
    finally:
        server.stop()
    errors = tally.get(500, 0) + tally.get("error chunks", 0)
    growth = (rss_end - rss_start) / rss_start
    print(f"warm-up: {warm}")
    print(f"{args.requests} requests at {args.concurrency} concurrent in {seconds:.0f} s: {tally}")
    print(f"server errors: {errors}; alive at the end: {alive}")
    print(
        f"RSS after warm-up {rss_start:.0f} MiB, at the end {rss_end:.0f} MiB: {growth:+.1%} "
        "(goal: within 10%)"
    )
    live = [
        line
        for line in metrics.splitlines()
        if line.startswith(("scratchlm_batch_size ", "scratchlm_queue_depth "))
    ]
    print("at the end: " + ", ".join(live))


if __name__ == "__main__":
    main()

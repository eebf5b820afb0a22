"""Serving throughput under load: 16 concurrent streaming clients against one client alone.

    python benchmarks/bench_serve.py --work /tmp/bench-serve            # ours, ours unbatched, transformers
    python benchmarks/bench_serve.py --work /tmp/bench-serve --no-hf    # without transformers serve

Three servers, one after another, on the same model (llama-10m, context 1024, random weights, a 4096-token
BPE) and the same load, each alone on the machine:
- `scratchlm serve` with continuous batching (--max-batch 16);
- `scratchlm serve --max-batch 1`: the same server with batching off;
- `transformers serve --continuous-batching` on the Hugging Face export of the same weights.
Each gets a warm-up, then one streaming client of 128 tokens (best of four), then 16 at once. Greedy, so
every server does the same work; tokens are the server's usage count (ours) or content chunks.
Goal (issue 13): aggregate tokens/s under 16 clients >= 6x one client alone; p50 and p99 time to first token.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import (  # noqa: E402
    free_port,
    ours_command,
    percentile,
    prepare_model,
    start_server,
    stream_completion,
)

PROMPT = "ROMEO:\nWhat light through yonder window breaks?\n"


async def measure(server, clients: int, tokens: int, usage: bool) -> dict:
    async with httpx.AsyncClient(timeout=600) as client:
        for _ in range(2):  # warm-up: first-call allocations, lazy imports
            await stream_completion(client, server, PROMPT, 16, usage)
        single = []
        for _ in range(4):  # the best of four: one stream is the noisier side of the ratio
            r = await stream_completion(client, server, PROMPT, tokens, usage)
            single.append(r.tokens / r.seconds)
        cpu, start = _cpu_seconds(), time.perf_counter()
        results = await asyncio.gather(
            *(stream_completion(client, server, PROMPT, tokens, usage) for _ in range(clients))
        )
        wall = time.perf_counter() - start
        client_cpu = _cpu_seconds() - cpu
    failed = [r for r in results if r.status != 200 or r.error]
    ttfts = [r.ttft for r in results if r.ttft is not None]
    total = sum(r.tokens for r in results)
    return {
        "single_tps": max(single),
        "load_tps": total / wall,
        "ratio": total / wall / max(single),
        "ttft_p50": percentile(ttfts, 50),
        "ttft_p99": percentile(ttfts, 99),
        "tokens": total,
        "failed": len(failed),
        "wall": wall,
        "client_cpu": client_cpu / wall,  # cores this load generator itself kept busy, of the machine's 2
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-serve"))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument(
        "--threads", type=int, help="OMP_NUM_THREADS of each server (default: ours picks, HF's torch picks)"
    )
    parser.add_argument("--no-hf", action="store_true", help="skip transformers serve")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    ours_dir, hf_dir = prepare_model(args.work)

    runs = [
        ("scratchlm serve (continuous batching, 16 rows)", "ours", 16),
        ("scratchlm serve --max-batch 1", "ours", 1),
    ]
    if not args.no_hf:
        runs.append(("transformers serve --continuous-batching", "hf", 0))
    rows = []
    for label, kind, batch in runs:
        port = free_port()
        if kind == "ours":
            cmd, model = ours_command(ours_dir, port, batch), "llama-10m"
        else:
            cmd = [
                "transformers",
                "serve",
                str(hf_dir),
                "--continuous-batching",
                "--device",
                "cpu",
                "--port",
                str(port),
            ]
            cmd += ["--host", "127.0.0.1"]
            model = str(hf_dir)
        server = start_server(cmd, model, port, args.threads, args.work / f"{kind}-{batch}.log")
        try:
            result = asyncio.run(measure(server, args.clients, args.tokens, usage=kind == "ours"))
        finally:
            server.stop()
        rows.append((label, result))
        print(f"{label}: {result}", flush=True)

    print(
        f"\n{args.clients} streaming clients x {args.tokens} tokens, greedy, llama-10m, "
        f"threads: {args.threads or 'each server picks'}"
    )
    print("| server | 1 client tok/s | 16 clients tok/s | ratio | TTFT p50 | TTFT p99 | failed |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, r in rows:
        print(
            f"| {label} | {r['single_tps']:.1f} | {r['load_tps']:.1f} | {r['ratio']:.2f}x | "
            f"{r['ttft_p50']:.2f} s | {r['ttft_p99']:.2f} s | {r['failed']} |"
        )
    base = rows[0][1]["load_tps"]
    for label, r in rows[1:]:
        print(f"ours batched / {label}: {base / r['load_tps']:.2f}x under load")


if __name__ == "__main__":
    main()

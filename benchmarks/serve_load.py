"""Shared pieces of the serving benchmarks: the llama-10m model they serve, starting a server process,
and streaming clients that time their first token.

Not a benchmark itself: `bench_serve.py` (throughput under load) and `soak_serve.py` (500 requests with
disconnects) import it.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


def prepare_model(work: Path, context: int = 1024) -> tuple[Path, Path]:
    """(our model folder, its Hugging Face export): llama-10m with random weights and a 4096-token byte-level
    BPE trained on Tiny Shakespeare ($SCRATCHLM_DATA), made once and kept in `work`."""
    ours, hf = work / "llama-10m", work / "llama-10m-hf"
    if (ours / "config.json").is_file() and (hf / "config.json").is_file():
        return ours, hf
    import torch

    from scratchlm.interop.hf import export_hf
    from scratchlm.model import Transformer, get_preset
    from scratchlm.model.folder import save_model
    from scratchlm.tokenizer import train_bpe

    data = Path(os.environ.get("SCRATCHLM_DATA", "../shared/data")) / "tinyshakespeare.txt"
    tokenizer = train_bpe(data.read_text(encoding="utf-8"), 4096)
    torch.manual_seed(0)
    model = Transformer(
        get_preset("llama-10m", context_length=context, vocab_size=tokenizer.vocab_size)
    ).eval()
    save_model(ours, model, tokenizer)
    export_hf(model, hf, tokenizer)
    return ours, hf


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    model: str

    def rss_mib(self) -> float:
        """Resident memory of the server process (Linux /proc)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_server(cmd: list[str], model: str, port: int, threads: int | None, log: Path) -> Server:
    """Start `cmd`; `threads` sets OMP_NUM_THREADS for it (None: the server's own choice)."""
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    out = open(log, "w")  # noqa: SIM115 (the process owns it)
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}); see {log}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return Server(proc, url, model)
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"the server did not answer /health in 300 s; see {log}")


def ours_command(model_dir: Path, port: int, max_batch: int) -> list[str]:
    return [
        sys.executable, "-m", "scratchlm", "serve", "--ckpt", str(model_dir), "--port", str(port),
        "--max-batch", str(max_batch), "--max-queue", "256", "--device", "cpu", "--model-name", "llama-10m",
    ]  # fmt: skip


@dataclass
class StreamResult:
    ttft: float | None  # seconds to the first text
    seconds: float
    tokens: int  # the server's usage count when it gives one, else content chunks
    status: int
    error: str | None = None


async def stream_completion(
    client: httpx.AsyncClient, server: Server, prompt: str, max_tokens: int, usage: bool = True
) -> StreamResult:
    body = {
        "model": server.model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    if usage:
        body["stream_options"] = {"include_usage": True}
    start = time.perf_counter()
    ttft, chunks, counted = None, 0, None
    async with client.stream("POST", server.url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            return StreamResult(
                None, time.perf_counter() - start, 0, r.status_code, (await r.aread()).decode()
            )
        async for line in r.aiter_lines():
            # Parse as little as possible: on two cores this client shares the CPU with the server.
            if not line.startswith("data: {"):
                continue
            line = line.replace('": ', '":')  # one spelling of the JSON, compact or not
            if '"error"' in line[:12]:
                return StreamResult(ttft, time.perf_counter() - start, chunks, 200, line)
            if '"usage":{' in line:
                counted = json.loads(line[6:])["usage"]["completion_tokens"]
            if ('"text":' in line and '"text":""' not in line) or '"content":"' in line:
                chunks += 1
                if ttft is None:
                    ttft = time.perf_counter() - start
    return StreamResult(ttft, time.perf_counter() - start, counted if counted is not None else chunks, 200)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def run(coro):
    return asyncio.run(coro)

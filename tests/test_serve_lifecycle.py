"""`scratchlm serve` as a process: SIGTERM drains in-flight requests, then ends what is left with an error
chunk; binding beyond localhost without a key warns."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch
import uvicorn

from scratchlm.model import ModelConfig, Transformer
from scratchlm.model.folder import save_model
from scratchlm.serve.config import ServeConfig
from scratchlm.serve.server import serve
from scratchlm.tokenizer import CHAT_SPECIAL_TOKENS, ENDOFTEXT, train_char


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tokenizer = train_char(
        ["abcdefghijklmnopqrstuvwxyz ,."], special_tokens=(ENDOFTEXT, *CHAT_SPECIAL_TOKENS)
    )
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size, context_length=4096, n_layers=1, d_model=16, n_heads=2, d_ff=32
    )
    model = Transformer(config).eval()
    with torch.no_grad():  # logit 0 for the special tokens: greedy, some letter always beats them
        for token in (ENDOFTEXT, *CHAT_SPECIAL_TOKENS):
            model.lm_head.weight[tokenizer.special_tokens[token]] = 0.0
    return save_model(tmp_path_factory.mktemp("lifecycle") / "model", model, tokenizer)


# uvicorn re-raises a signal it caught once it has shut down, so the exit status says SIGTERM, as Unix
# expects of a process ended by one; what matters is that it got there by draining.
STOPPED = (0, -signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model_dir, drain: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "scratchlm", "serve", "--ckpt", str(model_dir), "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--drain-seconds", str(drain), "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120  # only stops a hang: a loaded machine may start torch slowly
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"the server did not start: {proc.stdout.read()}")


def stream_then_sigterm(proc, url, max_tokens: int) -> list[dict]:
    """Start a streaming completion, SIGTERM the server after its first piece, read the stream to its end."""
    body = {"model": "model", "prompt": "go on", "max_tokens": max_tokens, "stream": True, "temperature": 0}
    events = []
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            payload = line[len("data: ") :]
            events.append("[DONE]" if payload == "[DONE]" else json.loads(payload))
            if len(events) == 2:
                proc.send_signal(signal.SIGTERM)
    return events


def test_sigterm_lets_a_short_request_finish_then_exits(model_dir):
    proc, url = start(model_dir, drain=120)  # the drain ends with the request; 120 s only stops a hang
    try:
        events = stream_then_sigterm(proc, url, max_tokens=300)
        assert proc.wait(timeout=180) in STOPPED
    finally:
        proc.kill()
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"][0]["finish_reason"] == "length"  # it ran to its end, not cut
    assert sum(len(e["choices"][0]["text"]) for e in events[:-1]) > 100


def test_sigterm_past_the_drain_timeout_ends_the_stream_with_an_error_chunk(model_dir):
    # No drain at all: the request, 4000 tokens (seconds of decoding), is cut at the loop's next turn.
    proc, url = start(model_dir, drain=0)
    try:
        events = stream_then_sigterm(proc, url, max_tokens=4000)
        assert proc.wait(timeout=60) in STOPPED
    finally:
        proc.kill()
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["type"] == "server_error"
    assert all("error" not in e for e in events[:-2])
    assert sum(len(e["choices"][0]["text"]) for e in events[:-2]) < 4000  # cut, not run to its end
    with pytest.raises(httpx.TransportError):  # and nothing listens any more
        httpx.get(url + "/health", timeout=2)


def test_binding_beyond_localhost_without_a_key_warns(model_dir, monkeypatch):
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: None)  # no socket is opened in this test
    monkeypatch.delenv("SCRATCHLM_API_KEY", raising=False)
    said = []
    serve(ServeConfig(ckpt=str(model_dir), host="0.0.0.0", device="cpu"), say=said.append)
    assert any("no API key" in line for line in said)
    said.clear()
    serve(ServeConfig(ckpt=str(model_dir), host="0.0.0.0", api_key="k", device="cpu"), say=said.append)
    assert not any("no API key" in line for line in said)


def test_a_cpu_server_leaves_one_core_to_the_http_side(monkeypatch):
    from scratchlm.serve.server import cpu_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert cpu_threads(ServeConfig(ckpt="m")) == 7
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert cpu_threads(ServeConfig(ckpt="m")) == 1
    assert cpu_threads(ServeConfig(ckpt="m", threads=3)) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert cpu_threads(ServeConfig(ckpt="m")) is None  # the user's setting stands

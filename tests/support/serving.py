"""What the server tests share: a random chat model, and a FastAPI app served by uvicorn on 127.0.0.1 in
a thread of the test process (for tests that need a real socket: the openai client, a browser)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import torch
import uvicorn

from scratchlm.model import ModelConfig, Transformer


def random_model(tokenizer, context: int, seed: int) -> Transformer:
    """Two layers of width 32, with a wide init: a random model's greedy text then wanders instead of
    repeating one character, so batched and lone decoding have something to disagree on."""
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size,
        context_length=context,
        n_layers=2,
        d_model=32,
        n_heads=4,
        n_kv_heads=2,
        init_std=0.3,
    )
    return Transformer(config).eval()


@contextlib.contextmanager
def serving(app):
    """Yields the base URL, "http://127.0.0.1:PORT" (a free port, held open and handed to uvicorn so no
    other process can take it between choosing and binding)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started and thread.is_alive():
            thread.join(0.02)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def wait_until(condition, timeout: float = 30.0) -> None:
    """Poll `condition` until it holds. The timeout only stops a hang: a loaded machine is slow, not wrong,
    so no test decides on how long this took."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout:.0f} s")
        time.sleep(0.005)

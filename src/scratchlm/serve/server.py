"""`serve(config)`: load the model, start the scheduler, run the app under uvicorn until a signal.

SIGTERM (or Ctrl-C) drains: uvicorn stops listening at once, in-flight requests go on for up to
`drain_seconds`, and whatever is still running then ends with an error chunk (a stream) or a 503.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from scratchlm.errors import ScratchError
from scratchlm.serve.config import ServeConfig

log = logging.getLogger(__name__)


def cpu_threads(config: ServeConfig) -> int | None:
    """Torch's thread count for a CPU server, or None to leave torch's own choice.

    One core stays with the HTTP side: its event loop wakes for every streamed chunk, and a core it takes
    from a torch worker stalls every parallel op at its barrier. Measured on 2 cores (llama-10m, 16
    streams of 128 tokens, docs/experiments.md): 1 torch thread served 899 tok/s, 2 threads 720."""
    if config.threads is not None:
        return config.threads
    if os.environ.get("OMP_NUM_THREADS"):
        return None  # the user's
    return max(1, (os.cpu_count() or 2) - 1)


def build(config: ServeConfig):
    """(app, scheduler, model name) for `config`; the scheduler is started."""
    import torch

    from scratchlm.eval.checkpoint import load_checkpoint
    from scratchlm.serve.app import create_app
    from scratchlm.serve.metrics import ServerMetrics
    from scratchlm.serve.scheduler import Scheduler

    model, tokenizer, _ = load_checkpoint(config.ckpt, device=config.device, dtype=config.dtype)
    threads = cpu_threads(config)
    if threads is not None and next(model.parameters()).device.type == "cpu":
        torch.set_num_threads(threads)
    name = config.model_name or Path(config.ckpt).resolve().name
    metrics = ServerMetrics()
    scheduler = Scheduler(
        model, tokenizer, max_batch=config.max_batch, max_queue=config.max_queue, observer=metrics
    )
    scheduler.start()
    return create_app(scheduler, config, name, metrics), scheduler, name


def serve(config: ServeConfig, say=print) -> int:
    import uvicorn

    if config.api_key is None and os.environ.get("SCRATCHLM_API_KEY"):
        config.api_key = os.environ["SCRATCHLM_API_KEY"]
    if config.exposed and config.api_key is None:
        log.warning(
            "binding %s without --api-key: anyone who can reach this address can use the model; "
            "give --api-key KEY (or SCRATCHLM_API_KEY), or bind 127.0.0.1",
            config.host,
        )
        say(f"warning: serving on {config.host} with no API key: anyone who can reach it can use the model")
    app, scheduler, name = build(config)

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if not scheduler.draining:  # the first signal drains; uvicorn then waits for the responses
                threading.Thread(target=scheduler.drain, args=(config.drain_seconds,), daemon=True).start()
            super().handle_exit(sig, frame)

    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level="warning",
        timeout_graceful_shutdown=int(config.drain_seconds) + 5,  # a backstop behind our own drain
    )
    server = DrainingServer(uv_config)
    say(f"serving {name} on http://{config.host}:{config.port}/ (OpenAI API under /v1, chat page at /)")
    try:
        server.run()
    except OSError as e:
        raise ScratchError(f"cannot serve on {config.host}:{config.port}: {e.strerror or e}") from None
    finally:
        scheduler.stop()
    return 0

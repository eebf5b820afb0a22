"""`scratchlm serve`: an OpenAI-compatible HTTP server with continuous batching and a chat page.

scratchlm serve --ckpt runs/sft                       # http://127.0.0.1:8000/ and /v1/chat/completions
scratchlm serve --ckpt runs/sft --max-batch 1         # one request at a time (no batching)
scratchlm serve --ckpt runs/sft --host 0.0.0.0 --api-key "$KEY"
"""

from __future__ import annotations

from scratchlm.cli.derive import add_dataclass_arguments, dataclass_from_args
from scratchlm.serve.config import ServeConfig


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP: the OpenAI API (chat and completions) and a chat page",
        description="An OpenAI-compatible server (GET /v1/models, POST /v1/completions, POST "
        "/v1/chat/completions, streaming or not) that batches all live requests at every decoding step, "
        "with a chat page at /, GET /health and Prometheus GET /metrics. SIGTERM drains in-flight requests.",
    )
    add_dataclass_arguments(p, ServeConfig)
    p.set_defaults(func=_serve)


def _serve(args) -> int:
    from scratchlm.serve.server import serve

    return serve(dataclass_from_args(ServeConfig, args))

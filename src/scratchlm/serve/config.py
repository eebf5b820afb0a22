"""`ServeConfig`: how `scratchlm serve` runs. Free of torch, so `scratchlm serve --help` derives its flags
from these fields without importing it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from scratchlm.errors import ScratchError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeConfig:
    ckpt: str = field(
        metadata={"help": "model folder, or a run folder (its final/ or newest)", "metavar": "DIR"}
    )
    host: str = field(
        default="127.0.0.1", metadata={"help": "address to bind (another needs --api-key)", "metavar": "ADDR"}
    )
    port: int = field(default=8000, metadata={"help": "port"})
    api_key: str | None = field(
        default=None, metadata={"help": "require 'Authorization: Bearer KEY' on /v1/ (default: env"
                                        " SCRATCHLM_API_KEY, else none)", "metavar": "KEY"}
    )  # fmt: skip
    model_name: str | None = field(
        default=None,
        metadata={"help": "the id clients ask for (default: the folder's name)", "metavar": "NAME"},
    )
    max_batch: int = field(default=16, metadata={"help": "rows decoded together (1: no batching)"})
    max_queue: int = field(default=64, metadata={"help": "requests that may wait; more get 429"})
    max_body_bytes: int = field(default=1 << 20, metadata={"help": "larger request bodies get 413"})
    prompt_overflow: Literal["error", "truncate"] = field(
        default="error",
        metadata={"help": "a prompt over the context: 400, or keep its newest tokens with a notice"},
    )
    drain_seconds: float = field(
        default=30.0, metadata={"help": "on SIGTERM, how long in-flight requests may still run"}
    )
    threads: int | None = field(
        default=None,
        metadata={"help": "torch threads on a CPU (default: $OMP_NUM_THREADS, else one core fewer than the "
                          "machine has: the HTTP side keeps one)"},
    )  # fmt: skip
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N | mps"})
    dtype: Literal["auto", "float32", "bfloat16"] = field(
        default="auto", metadata={"help": "auto: bf16 on CUDA, else fp32"}
    )

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ScratchError(f"--threads must be >= 1, got {self.threads}")
        for name in ("max_batch", "max_queue", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ScratchError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.drain_seconds < 0:
            raise ScratchError(f"--drain-seconds must be >= 0, got {self.drain_seconds}")
        if not 0 < self.port < 65536:
            raise ScratchError(f"--port must be 1-65535, got {self.port}")

    @property
    def exposed(self) -> bool:
        """Bound to an address other machines can reach."""
        return self.host not in LOCAL_HOSTS

"""What `GET /metrics` reports, in Prometheus' text format, through `prometheus_client`.

Each server owns its registry (not the library's global one), so two servers in one process, as in the
tests, count apart.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Time to first token on a CPU ranges from milliseconds (an idle server) to many seconds (a long queue).
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServerMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "scratchlm_requests", "HTTP requests answered", ["endpoint", "status"], registry=r
        )
        self.prompt_tokens = Counter("scratchlm_prompt_tokens", "prompt tokens prefilled", registry=r)
        self.completion_tokens = Counter("scratchlm_completion_tokens", "tokens generated", registry=r)
        self.queue_depth = Gauge("scratchlm_queue_depth", "requests waiting for a batch row", registry=r)
        self.batch_size = Gauge("scratchlm_batch_size", "rows in the last decode step", registry=r)
        self.batch_sizes = Histogram(
            "scratchlm_decode_batch_size",
            "rows per decode step",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.ttft = Histogram(
            "scratchlm_time_to_first_token_seconds",
            "from a request's arrival to its first token",
            buckets=TTFT_BUCKETS,
            registry=r,
        )

    # The scheduler's observer interface (called from its thread; prometheus_client is thread-safe).
    def on_step(self, batch_size: int, queue_depth: int) -> None:
        self.batch_size.set(batch_size)
        self.queue_depth.set(queue_depth)
        if batch_size:
            self.batch_sizes.observe(batch_size)

    def on_first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)

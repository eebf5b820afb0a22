"""Continuous batching: one decode loop over every live request, batched at every step.

Iteration-level scheduling (Orca, Yu et al. 2022; vLLM): between two decode steps, waiting sequences are
prefilled (each alone, so a long prompt never changes another's numbers) and join the batch, and finished
or abandoned ones leave at once. Each sequence keeps its own sampling settings, its own seeded generator,
its own stop strings and its own row of the KV cache (`BatchSlots`).

A sequence's tokens are the ones it gets decoded alone by `decode_steps`: the same prefill, the same
per-row sampling call with its own generator, and attention that masks the other rows' pads (the tests
hold the two against each other, greedy and seeded, under concurrency).

    scheduler = Scheduler(model, tokenizer, max_batch=16)
    scheduler.start()
    seq = Sequence(prompt_ids, SamplingConfig(max_new_tokens=64, temperature=0), eot_id, on_event=print)
    scheduler.submit([seq])      # on_event(seq, text, finish_reason) from the scheduler's thread

The loop runs in one background thread; `on_event` is called from it (the server hands events to its
event loop with `call_soon_threadsafe`). `finish_reason` is "stop" (end token or stop string), "length"
(max tokens or the context), "cancelled" (the client left) or "error" (shutdown, or a failure).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from scratchlm.errors import ScratchError
from scratchlm.generate.config import SamplingConfig
from scratchlm.generate.packed import PackedDecoder, can_pack
from scratchlm.generate.sampling import make_generator, sample_next_logprobs
from scratchlm.generate.stream import TextStream
from scratchlm.serve.slots import BatchSlots

log = logging.getLogger(__name__)

EventHandler = Callable[["Sequence", str, "str | None"], None]


class QueueFull(ScratchError):
    """More requests wait than the queue holds (HTTP 429)."""


class Draining(ScratchError):
    """The server is shutting down and takes no new requests (HTTP 503)."""


@dataclass(eq=False)
class Sequence:
    """One choice of one request: its prompt ids, how to sample, and where its text goes.

    `max_new_tokens` is capped at what the context leaves: the prompt plus every token fed back must fit.
    """

    prompt: list[int]
    sampling: SamplingConfig
    eot_id: int | None
    on_event: EventHandler
    stop_tokens: tuple[str, ...] = ()  # extra stop strings the request did not give (chat's role tokens)
    tag: object = None  # the caller's own (the choice's index)
    cancelled: bool = False  # set from any thread; the loop drops the row before its next step
    generated: int = 0
    finish_reason: str | None = None
    arrived: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    last_token: int = 0
    stream: TextStream | None = None
    generator: torch.Generator | None = None

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        *,
        max_batch: int = 16,
        max_queue: int = 64,
        observer=None,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.context = model.config.context_length
        self.max_batch, self.max_queue = max_batch, max_queue
        self.vocab_limit = getattr(tokenizer, "vocab_size", None)
        self.device = next(model.parameters()).device
        self.observer = observer  # .on_step(batch_size, queue_depth), .on_first_token(seconds)
        self.waiting: deque[list[Sequence]] = deque()  # whole requests: their choices join together
        self.live: list[Sequence] = []  # row i of the batch cache is live[i]
        self.slots = BatchSlots(model, max_batch)
        # Decode steps through the repacked weights, as `decode_steps` takes them (a server's weights do
        # not change, so they are packed once); prefill stays with the model's forward in both.
        self.decoder = PackedDecoder(model) if can_pack(model) else None
        self._wake = threading.Condition()
        self._stop = False
        self._draining = False
        self._abort_all = False  # drain's timeout passed: end everything at the loop's next turn
        self._thread: threading.Thread | None = None

    # --- the caller's side (any thread) -------------------------------------------------------------

    def submit(self, sequences: list[Sequence]) -> None:
        """Queue one request's sequences; raises QueueFull or Draining instead of waiting."""
        if len(sequences) > self.max_batch:
            raise ScratchError(
                f"the request asks for {len(sequences)} sequences (prompts x n); this server decodes at most "
                f"{self.max_batch} together; ask for fewer"
            )
        for seq in sequences:
            if not seq.prompt:
                raise ScratchError("an empty prompt has no token to start from")
            if len(seq.prompt) > self.context:
                raise ScratchError(f"the prompt is {len(seq.prompt)} tokens; the context is {self.context}")
        with self._wake:
            if self._draining:
                raise Draining("the server is shutting down; retry on another instance")
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"{len(self.waiting)} requests are waiting, the most this server queues")
            self.waiting.append(sequences)
            self._wake.notify()

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.live)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="scratchlm-scheduler", daemon=True)
        self._thread.start()

    def drain(self, timeout: float) -> bool:
        """Take no new requests; wait up to `timeout` s for the queued and live ones to finish, then end
        the rest with finish_reason "error". Returns True when everything finished by itself."""
        with self._wake:
            self._draining = True
        deadline = time.monotonic() + timeout
        while self.busy and time.monotonic() < deadline:
            time.sleep(0.05)
        clean = not self.busy
        with self._wake:
            self._abort_all = True
            self._wake.notify()
        while self.busy and self._thread is not None and self._thread.is_alive():
            time.sleep(0.01)
        return clean

    def stop(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # --- the loop (the scheduler's thread) ----------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not (self._stop or self.waiting or self.live or self._abort_all):
                    self._wake.wait()
                if self._stop:
                    return
            try:
                if self._abort_all:
                    self._end_everything("error")
                else:
                    self.step()
            except Exception:  # a failure ends the requests it touched, never the loop
                log.exception("decode step failed; ending the live requests with an error")
                self._end_everything("error")

    @torch.inference_mode()
    def step(self) -> None:
        """One iteration: admit what fits, drop the abandoned, decode one token for every live row.
        The loop thread calls it; a test may call it directly instead of `start()`."""
        self._admit()
        self._drop_cancelled()
        if self.live:
            self._step()
        if self.observer is not None:
            self.observer.on_step(len(self.live), len(self.waiting))

    def _admit(self) -> None:
        """Prefill waiting requests while their choices fit in the batch."""
        while self.waiting and len(self.live) + len(self.waiting[0]) <= self.max_batch:
            with self._wake:
                request = self.waiting.popleft()
            for seq in request:
                if seq.cancelled:
                    self._finish(seq, "cancelled")
                else:
                    self._prefill(seq)

    def _prefill(self, seq: Sequence) -> None:
        cfg = seq.sampling
        seq.stream = TextStream(self.tokenizer, [*cfg.stop, *seq.stop_tokens])
        seq.generator = make_generator(cfg.seed, self.device)
        # The k-th new token is fed back at position len(prompt) + k - 1, which must fit the context.
        seq.sampling = _with_max(cfg, min(cfg.max_new_tokens, self.context - len(seq.prompt) + 1))
        if seq.sampling.max_new_tokens == 0:
            self._finish(seq, "length")
            return
        prefill = self.model.new_cache(1, len(seq.prompt))
        ids = torch.tensor([seq.prompt], device=self.device)
        logits = self.model(ids, cache=prefill)[:, -1].float()  # (1, V)
        token = self._sample(logits, [seq])[0]
        if self._accept(seq, token):
            seq.last_token = token
            self.slots.join(prefill)
            self.live.append(seq)

    def _step(self) -> None:
        if self.slots.length == self.slots.max_len:
            self.slots.compact()  # a row reaching the context has finished, so some pad can go
        tokens = torch.tensor([[s.last_token] for s in self.live], device=self.device)  # (B, 1)
        if self.decoder is not None:
            logits = self.decoder(tokens, self.slots.cache)  # (B, 1, V)
        else:
            logits = self.model(tokens, cache=self.slots.cache)
        logits = logits[:, -1].float()  # (B, V)
        picks = self._sample(logits, self.live)
        for row in reversed(range(len(self.live))):  # leaving moves the last row: walk from the end
            seq = self.live[row]
            if self._accept(seq, picks[row]):
                seq.last_token = picks[row]
            else:
                self._leave(row)

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        """One token per row, each drawn exactly as `decode_steps` draws a lone row's."""
        if self.vocab_limit is not None and self.vocab_limit < logits.size(-1):
            logits = logits.clone()
            logits[:, self.vocab_limit :] = float("-inf")
        picks = [0] * len(seqs)
        greedy = [i for i, s in enumerate(seqs) if s.sampling.greedy]
        if greedy:  # an argmax per row is the same batched
            for i, tok in zip(greedy, logits[greedy].argmax(dim=-1).tolist()):
                picks[i] = tok
        for i, seq in enumerate(seqs):
            if not seq.sampling.greedy:
                ids, _ = sample_next_logprobs(logits[i : i + 1], seq.sampling, generator=seq.generator)
                picks[i] = int(ids[0])
        return picks

    def _accept(self, seq: Sequence, token: int) -> bool:
        """Take one new token into `seq`; emit its text. False when the sequence has finished."""
        seq.generated += 1
        if seq.first_token_at is None:
            seq.first_token_at = time.perf_counter()
            if self.observer is not None:
                self.observer.on_first_token(seq.first_token_at - seq.arrived)
        stream, cfg = seq.stream, seq.sampling
        reason = None
        if cfg.stop_at_eot and seq.eot_id is not None and token == seq.eot_id:
            stream.end()
            reason = "stop"
        else:
            stream.push(token)
            if stream.finished:
                reason = "stop"
            elif seq.generated >= cfg.max_new_tokens:
                stream.end()
                reason = "length"
        piece = stream.take()
        if reason is not None:
            self._finish(seq, reason, piece)
            return False
        if piece:
            seq.on_event(seq, piece, None)
        return True

    def _finish(self, seq: Sequence, reason: str, piece: str = "") -> None:
        seq.finish_reason = reason
        seq.on_event(seq, piece, reason)

    def _leave(self, row: int) -> None:
        self.slots.leave(row)
        last = self.live.pop()
        if row < len(self.live):
            self.live[row] = last

    def _drop_cancelled(self) -> None:
        for row in reversed(range(len(self.live))):
            if self.live[row].cancelled:
                seq = self.live[row]
                self._leave(row)
                self._finish(seq, "cancelled")

    def _end_everything(self, reason: str) -> None:
        with self._wake:
            waiting, self.waiting = list(self.waiting), deque()
            self._abort_all = False
        for row in reversed(range(len(self.live))):
            seq = self.live[row]
            self._leave(row)
            self._finish(seq, reason, seq.stream.take() if seq.stream else "")
        for request in waiting:
            for seq in request:
                self._finish(seq, reason)


def _with_max(config: SamplingConfig, max_new_tokens: int) -> SamplingConfig:
    return replace(config, max_new_tokens=max_new_tokens)

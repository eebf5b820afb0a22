"""Continuous batching against its slow twin: each request decoded alone by `decode_steps`.

Requests join mid-batch (a longer prompt shifts every row), leave as they finish, reach the context
(the batch compacts), and are cancelled; every request's text and finish reason must equal its lone run,
greedy and seeded.
"""

from __future__ import annotations

import threading

import pytest
import torch
from support.serving import random_model

from scratchlm.errors import ScratchError
from scratchlm.generate import SamplingConfig, decode_steps
from scratchlm.serve.scheduler import QueueFull, Scheduler, Sequence
from scratchlm.serve.slots import BatchSlots
from scratchlm.tokenizer import CHAT_SPECIAL_TOKENS, ENDOFTEXT, train_char

ALPHABET = "abcdefghijklmnopqrstuvwxyz ,.?!"
CONTEXT = 48


@pytest.fixture(scope="module")
def tokenizer():
    return train_char([ALPHABET], special_tokens=(ENDOFTEXT, *CHAT_SPECIAL_TOKENS))


@pytest.fixture(scope="module")
def model(tokenizer):
    return random_model(tokenizer, CONTEXT, seed=0)


def alone(model, tokenizer, prompt: list[int], sampling: SamplingConfig) -> tuple[str, str]:
    """The reference: one request through the engine, capped at the context as the scheduler caps it."""
    cap = min(sampling.max_new_tokens, CONTEXT - len(prompt) + 1)
    cfg = SamplingConfig(**{**sampling.__dict__, "max_new_tokens": cap})
    pieces, finished, n = [], False, 0
    for step in decode_steps(
        model, tokenizer, [prompt], cfg, eot_id=tokenizer.eot_id, vocab_limit=tokenizer.vocab_size
    ):
        pieces.append(step.texts[0])
        finished, n = step.finished[0], n + 1
    return "".join(pieces), "stop" if finished else "length"


class Collect:
    def __init__(self):
        self.text: dict[object, list[str]] = {}
        self.reason: dict[object, str] = {}
        self.lock = threading.Lock()
        self.done = threading.Event()

    def __call__(self, seq: Sequence, piece: str, reason: str | None) -> None:
        with self.lock:
            self.text.setdefault(seq.tag, []).append(piece)
            if reason is not None:
                self.reason[seq.tag] = reason

    def result(self, tag) -> tuple[str, str]:
        return "".join(self.text.get(tag, [])), self.reason.get(tag)


def make_requests(tokenizer):
    encode = tokenizer.encode_ordinary
    open_ended = dict(stop_at_eot=False)  # a random model says <|endoftext|> early; these run to their cap
    return [
        (encode("hello there"), SamplingConfig(max_new_tokens=20, temperature=0, **open_ended)),
        (encode("a"), SamplingConfig(max_new_tokens=60, temperature=0, **open_ended)),  # reaches the context
        (encode("what is it, then?"), SamplingConfig(max_new_tokens=30, temperature=0.9, seed=3)),
        (
            encode("the longest prompt of all, by far, yes"),
            SamplingConfig(max_new_tokens=25, temperature=0, **open_ended),
        ),
        (encode("zz"), SamplingConfig(max_new_tokens=12, temperature=1.2, top_p=0.8, seed=11, **open_ended)),
        (encode("stop at the letter"), SamplingConfig(max_new_tokens=40, temperature=0, stop=["m"])),
    ]


def test_batched_requests_get_the_tokens_they_get_alone(model, tokenizer):
    requests = make_requests(tokenizer)
    expected = [alone(model, tokenizer, p, s) for p, s in requests]
    collect = Collect()
    scheduler = Scheduler(model, tokenizer, max_batch=4)
    seqs = [Sequence(p, s, tokenizer.eot_id, collect, tag=i) for i, (p, s) in enumerate(requests)]
    # Two start together; the others arrive while they decode, one of them with the longest prompt.
    scheduler.submit([seqs[0]])
    scheduler.submit([seqs[1]])
    sizes = []
    for step in range(200):
        if step in (3, 5, 9, 14):
            scheduler.submit([seqs[{3: 2, 5: 3, 9: 4, 14: 5}[step]]])
        scheduler.step()
        sizes.append(len(scheduler.live))
        if not scheduler.busy and step > 14:
            break
    assert not scheduler.busy
    assert max(sizes) == 4  # the batch was full at some step: rows really shared forwards
    for i, want in enumerate(expected):
        assert collect.result(i) == want, f"request {i}"
    assert expected[1][1] == "length" and expected[5][1] == "stop"  # both endings were exercised


def test_cancel_frees_the_row_at_the_next_step_and_others_go_on(model, tokenizer):
    requests = make_requests(tokenizer)[:3]
    expected = [alone(model, tokenizer, p, s) for p, s in requests]
    collect = Collect()
    scheduler = Scheduler(model, tokenizer, max_batch=3)
    seqs = [Sequence(p, s, tokenizer.eot_id, collect, tag=i) for i, (p, s) in enumerate(requests)]
    for seq in seqs:
        scheduler.submit([seq])
    scheduler.step()
    scheduler.step()
    seqs[0].cancel()
    scheduler.step()
    assert seqs[0] not in scheduler.live and len(scheduler.live) == 2
    assert collect.reason[0] == "cancelled"
    while scheduler.busy:
        scheduler.step()
    for i in (1, 2):
        assert collect.result(i) == expected[i]


def test_concurrent_submissions_from_threads_match_their_lone_runs(model, tokenizer):
    requests = make_requests(tokenizer) * 2
    expected = [alone(model, tokenizer, p, s) for p, s in requests]
    collect = Collect()
    scheduler = Scheduler(model, tokenizer, max_batch=5)
    scheduler.start()
    try:
        threads = [
            threading.Thread(
                target=scheduler.submit,
                args=([Sequence(p, s, tokenizer.eot_id, collect, tag=i)],),
            )
            for i, (p, s) in enumerate(requests)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for _ in range(600):
            if len(collect.reason) == len(requests):
                break
            threading.Event().wait(0.05)
    finally:
        scheduler.stop()
    for i, want in enumerate(expected):
        assert collect.result(i) == want, f"request {i}"


def test_a_full_queue_refuses_instead_of_waiting(model, tokenizer):
    scheduler = Scheduler(model, tokenizer, max_batch=1, max_queue=2)
    seq = lambda: Sequence([1, 2], SamplingConfig(max_new_tokens=3), None, lambda *a: None)  # noqa: E731
    scheduler.submit([seq()])
    scheduler.submit([seq()])
    with pytest.raises(QueueFull):
        scheduler.submit([seq()])
    with pytest.raises(ScratchError, match="at most 1 together"):  # it could never be admitted: refuse now
        Scheduler(model, tokenizer, max_batch=1).submit([seq(), seq()])


def test_slots_join_leave_and_compact_keep_each_rows_keys(model):
    """The bookkeeping alone: after joins (one shifting the batch right), a leave and a compaction, every
    row's real keys are its prefill's, right-aligned, and everything before them is masked."""
    slots = BatchSlots(model, capacity=3, max_len=CONTEXT)
    prefills = []
    for n in (5, 9, 3):
        cache = model.new_cache(1, n)
        with torch.inference_mode():
            model(torch.randint(0, 30, (1, n)), cache=cache)
        prefills.append(cache)
        slots.join(cache)
    assert slots.length == 9 and slots.starts == [4, 0, 6]
    slots.leave(0)  # row 2 (n=3) moves into row 0
    assert slots.starts == [6, 0]
    for row, prefill in ((0, prefills[2]), (1, prefills[1])):
        n, end = prefill.length, slots.length
        for layer in range(model.config.n_layers):
            assert torch.equal(slots.cache.keys[layer][row, :, end - n : end], prefill.keys[layer][0, :, :n])
        assert slots.cache.mask[row, : end - n].sum() == 0 and slots.cache.mask[row, end - n : end].all()
    slots.leave(1)  # only the short row is left: its 6 leading pads are dropped
    slots.compact()
    assert slots.starts == [0] and slots.length == 3 and not slots.cache.padded

"""Language-modelling figures over a whole text: loss (nats/token), perplexity and bits per byte.

Loss and perplexity depend on the tokenizer (a character model predicts more, easier tokens than a BPE
model), so the figure that compares models across tokenizers is bits per byte: the total negative
log-likelihood of the text, converted to bits, divided by its UTF-8 bytes. Every token is scored exactly
once. Each document starts after the `<|endoftext|>` token, as documents do in training; a tokenizer
without one leaves the first token of each document unscored (and its bytes uncounted).

Windows: by default consecutive windows of the model's context (fast; a window's first tokens see
little context); `stride=s` slides a full-context window `s` tokens at a time, so every token after the
first window sees at least `context - s` tokens (slower by `context / s`, and a lower, fairer loss).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scratchlm.errors import ScratchError
from scratchlm.eval.scoring import context_length, prefix_token, rolling_windows, score_continuations


def _document_requests(tokenizer, text: str, max_len: int, stride: int | None):
    """(requests, number of scored tokens, scored bytes) for one document."""
    ids = tokenizer.encode_ordinary(text)
    n_bytes = len(text.encode("utf-8"))
    prefix = prefix_token(tokenizer)
    if prefix is not None:
        ids = [prefix, *ids]
    elif ids:  # the first token has nothing to be predicted from
        n_bytes -= len(tokenizer.decode(ids[:1]).encode("utf-8"))
    if len(ids) < 2:
        return [], 0, 0
    return rolling_windows(ids, max_len, stride), len(ids) - 1, n_bytes


def evaluate_text(
    model,
    tokenizer,
    text: str | Sequence[str],
    *,
    stride: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> dict:
    """Score `text` (one string, or a list of documents scored independently) with `model`.

    Returns {"loss": nats/token, "ppl", "bpb": bits per UTF-8 byte, "tokens": scored tokens, "bytes"}.
    """
    max_len = context_length(model)
    if stride is not None and not 1 <= stride <= max_len:
        raise ScratchError(f"--stride {stride} must be between 1 and the model's context ({max_len})")
    documents = [text] if isinstance(text, str) else list(text)
    requests, n_tokens, n_bytes = [], 0, 0
    for doc in documents:
        doc_requests, doc_tokens, doc_bytes = _document_requests(tokenizer, doc, max_len, stride)
        requests += doc_requests
        n_tokens += doc_tokens
        n_bytes += doc_bytes
    if n_tokens == 0:
        raise ScratchError("the text to evaluate is empty (it needs at least two tokens); pass a longer text")
    nll = -sum(
        logprob
        for logprob, _ in score_continuations(
            model, requests, batch_size=batch_size, progress="text" if progress else None
        )
    )
    loss = nll / n_tokens
    return {
        "loss": loss,
        "ppl": math.exp(min(loss, 700.0)),  # exp overflows a float past ~709 (an untrained huge vocab)
        "bpb": nll / math.log(2) / max(1, n_bytes),
        "tokens": n_tokens,
        "bytes": n_bytes,
    }

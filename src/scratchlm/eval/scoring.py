"""Batched log-likelihood of token continuations: the one forward-pass core every evaluation shares.

Language-modelling metrics (windows over a text), multiple-choice tasks and the lm-evaluation-harness
adapter all reduce to the same request: "given these context tokens, how likely are these continuation
tokens?". Answering it in one place keeps the numbers consistent across `scratchlm eval`, the
built-in tasks and the harness, and gives the tests one fast path to check against a slow twin.

The model is anything with `forward(input_ids (B, T)) -> logits (B, T, V)` and `config.context_length`
(scratchlm's `Transformer`); it computes no loss, so the log-softmax is taken here, in float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F

# Upper bound on logits materialized per forward pass (rows * length * vocab floats). Keeps a batch of
# a 50k-vocabulary model at a 1k context within ~1 GiB of float32 log-probabilities.
LOGIT_BUDGET = 1 << 28


def context_length(model) -> int:
    """The longest input the model accepts (its position table / RoPE range)."""
    return int(model.config.context_length)


def model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA (the precision the model trains in); full precision on CPU."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prefix_token(tokenizer) -> int | None:
    """The token a text starts after: `<|endoftext|>`, as in training where documents follow it."""
    return getattr(tokenizer, "eot_id", None)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Tokens of (context, continuation), split the way lm-evaluation-harness splits them.

    Trailing whitespace of the context moves to the continuation, the whole string is encoded once and
    the continuation is what follows the context's own tokens: so a BPE merge across the boundary
    ("Answer:" + " yes") tokenizes as the model saw such text in training. An empty context becomes the
    prefix token (or, without one, the continuation's first token, which is then not scored).
    """
    if context == "":
        cont = tokenizer.encode_ordinary(continuation)
        prefix = prefix_token(tokenizer)
        if prefix is None or (cont and cont[0] == prefix):
            return cont[:1], cont[1:]
        return [prefix], cont
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer.encode_ordinary(context + continuation)
    ctx = tokenizer.encode_ordinary(context)
    return ctx, whole[len(ctx) :]


@torch.inference_mode()
def score_continuations(
    model,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    batch_size: int = 64,
    progress: str | None = None,
    autocast=None,
) -> list[tuple[float, bool]]:
    """Sum of log p(continuation | context) in nats, and whether greedy decoding would produce it.

    Each request is (context_ids, continuation_ids), the context non-empty. Inputs longer than the
    model's context are cut on the left (the continuation keeps as much context as fits). Requests are
    sorted longest first and right-padded into batches: a causal model's logits at a position never
    see the padding after it, so padding changes no score. `progress`: a label for a progress bar
    (None: no bar). `autocast`: () -> context manager for the forward pass (default `autocast_for`:
    bf16 on CUDA); training passes its own, so validation runs in the precision the run trains in.
    """
    from tqdm import tqdm

    max_len = context_length(model)
    device = model_device(model)
    rows = []  # (index, input tokens, number of scored positions at the end)
    results: list[tuple[float, bool] | None] = [None] * len(requests)
    for i, (ctx, cont) in enumerate(requests):
        if len(cont) == 0:  # nothing to predict: probability 1, and greedy decoding "produces" it
            results[i] = (0.0, True)
            continue
        assert len(ctx) > 0, "a request needs context tokens (use the end-of-text token for none)"
        whole = (list(ctx) + list(cont))[-(max_len + 1) :]
        rows.append((i, whole, min(len(cont), len(whole) - 1)))
    rows.sort(key=lambda r: -len(r[1]))
    bar = tqdm(total=len(rows), desc=progress, unit="seq", disable=progress is None, leave=False)
    start = 0
    while start < len(rows):
        longest = len(rows[start][1]) - 1
        vocab = getattr(model.config, "vocab_size", 1)
        fit = max(1, min(batch_size, LOGIT_BUDGET // max(1, longest * vocab)))
        batch = rows[start : start + fit]
        start += fit
        inputs = torch.zeros(len(batch), longest, dtype=torch.long)  # (B, T) right-padded with id 0
        targets = torch.zeros(len(batch), longest, dtype=torch.long)  # (B, T) next token at each position
        scored = torch.zeros(len(batch), longest, dtype=torch.bool)  # (B, T) positions that count
        for b, (_, whole, n_scored) in enumerate(batch):
            end = len(whole) - 1  # positions [end - n_scored, end) predict the continuation
            inputs[b, :end] = torch.tensor(whole[:-1])
            targets[b, :end] = torch.tensor(whole[1:])
            scored[b, end - n_scored : end] = True
        inputs, targets, scored = inputs.to(device), targets.to(device), scored.to(device)
        with autocast() if autocast is not None else autocast_for(device):
            logits = model(inputs)  # (B, T, V)
        logprobs = F.log_softmax(logits.float(), dim=-1).gather(2, targets[..., None])[..., 0]  # (B, T)
        totals = (logprobs * scored).sum(dim=1)  # (B,)
        greedy = ((logits.argmax(dim=-1) == targets) | ~scored).all(dim=1)  # (B,)
        # one transfer per batch, not per row: on a GPU each .item() would wait for the device
        for (index, _, _), total, is_greedy in zip(batch, totals.tolist(), greedy.tolist()):
            results[index] = (total, is_greedy)
        bar.update(len(batch))
    bar.close()
    return results  # type: ignore[return-value]


def rolling_windows(
    tokens: Sequence[int], max_len: int, stride: int | None = None
) -> list[tuple[list[int], list[int]]]:
    """Cut a token sequence into (context, continuation) requests that score every token once.

    `tokens[0]` is the prefix (never scored). The first window scores up to `max_len` tokens; each
    later one scores the next `stride` tokens, ending a full `max_len` window at its last scored token,
    so every token after the first window sees at least `max_len - stride` tokens of context (the last
    window gets the full context). `stride == max_len` (the default) is consecutive windows; this is
    the rule of lm-evaluation-harness's rolling windows with `context_len = max_len - stride + 1`.
    """
    stride = max_len if stride is None else stride
    assert 1 <= stride <= max_len
    last = len(tokens) - 1  # index of the last token to score
    out = []
    end = min(max_len, last)  # tokens (scored_from, end] are scored by this window
    scored_from = 0
    while scored_from < last:
        begin = max(0, end - max_len)  # inputs tokens[begin:end] predict tokens[begin+1:end+1]
        window = list(tokens[begin : end + 1])
        n_scored = end - scored_from
        out.append((window[:-n_scored], window[-n_scored:]))
        scored_from, end = end, min(end + stride, last)
    return out

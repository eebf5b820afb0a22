"""Loss, perplexity, bits per byte, and the batched scorer under them, against slow token-by-token twins.

Also holds the tiny model and tokenizer the other test_eval_* files build on (`tiny_setup`).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from scratchlm.errors import ScratchError
from scratchlm.eval.lm import evaluate_text
from scratchlm.eval.scoring import encode_pair, rolling_windows, score_continuations
from scratchlm.model import ModelConfig, Transformer

TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n"
)


@functools.cache
def tiny_tokenizer():
    """A byte-level BPE tokenizer with a few merges (so pieces cross word boundaries like real ones)."""
    from scratchlm.tokenizer import train_bpe

    return train_bpe(TEXT * 4, 256 + 40)


def tiny_model(vocab_size: int, context_length: int = 16, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=vocab_size, context_length=context_length, n_layers=1, d_model=16, n_heads=2
    )
    return Transformer(config).eval()


def tiny_setup(context_length: int = 16, seed: int = 0):
    tok = tiny_tokenizer()
    return tiny_model(tok.vocab_size, context_length, seed), tok


def token_logprob(model, context: list[int], target: int) -> float:
    """log p(target | context) from one unbatched, unpadded forward pass: the obviously correct twin."""
    with torch.no_grad():
        logits = model(torch.tensor([context]))[0, -1]
    return F.log_softmax(logits.float(), dim=-1)[target].item()


def slow_text_nll(model, tokens: list[int], max_len: int, stride: int) -> float:
    """Sum of -log p over tokens[1:], each predicted from the context the window rule promises it.

    The rule, restated independently: the first `max_len` tokens are predicted from everything before
    them; after that, tokens are taken in groups of `stride`, and a group whose last token is at index
    `e` is predicted from tokens[e - max_len : j] (its window), never from more than `max_len` tokens.
    """
    last = len(tokens) - 1
    total = 0.0
    for j in range(1, last + 1):
        if j <= max_len:
            begin = 0
        else:
            group_end = min(max_len + stride * math.ceil((j - max_len) / stride), last)
            begin = group_end - max_len
        total -= token_logprob(model, tokens[begin:j], tokens[j])
    return total


@pytest.mark.parametrize("stride", [None, 5, 1])
def test_evaluate_text_matches_token_by_token_twin(stride):
    model, tok = tiny_setup(context_length=12)
    text = TEXT[:90]
    tokens = [tok.eot_id, *tok.encode_ordinary(text)]
    want = slow_text_nll(model, tokens, 12, stride or 12)
    got = evaluate_text(model, tok, text, stride=stride)
    assert got["tokens"] == len(tokens) - 1
    assert got["bytes"] == len(text.encode("utf-8"))
    assert got["loss"] * got["tokens"] == pytest.approx(want, rel=1e-5)
    assert got["ppl"] == pytest.approx(math.exp(got["loss"]))
    assert got["bpb"] == pytest.approx(want / math.log(2) / got["bytes"], rel=1e-5)


def test_documents_are_scored_independently():
    model, tok = tiny_setup()
    a, b = TEXT[:50], TEXT[50:120]
    both = evaluate_text(model, tok, [a, b])
    ra, rb = evaluate_text(model, tok, a), evaluate_text(model, tok, b)
    assert both["tokens"] == ra["tokens"] + rb["tokens"]
    nll = ra["loss"] * ra["tokens"] + rb["loss"] * rb["tokens"]
    assert both["loss"] * both["tokens"] == pytest.approx(nll, rel=1e-5)


def test_stride_out_of_range_is_a_user_error():
    model, tok = tiny_setup(context_length=8)
    with pytest.raises(ScratchError, match="stride"):
        evaluate_text(model, tok, TEXT, stride=9)
    with pytest.raises(ScratchError, match="empty"):
        evaluate_text(model, tok, "")


@pytest.mark.parametrize("n_tokens,max_len,stride", [(1, 4, 4), (4, 4, 4), (5, 4, 4), (23, 4, 1), (23, 8, 3)])
def test_rolling_windows_score_every_token_once(n_tokens, max_len, stride):
    tokens = list(range(100, 100 + n_tokens + 1))  # prefix + n_tokens, all distinct
    scored = []
    for context, continuation in rolling_windows(tokens, max_len, stride):
        assert len(context) + len(continuation) - 1 <= max_len  # the window fits the model
        assert context + continuation == tokens[tokens.index(context[0]) : tokens.index(continuation[-1]) + 1]
        scored += continuation
    assert scored == tokens[1:]


def test_rolling_windows_equal_the_harness_windows():
    utils = pytest.importorskip(
        "lm_eval.utils", reason="lm-evaluation-harness (optional extra) not installed"
    )
    tokens = list(range(1000, 1040))
    for max_len in (4, 7, 16):
        for stride in {1, 3, max_len}:
            theirs = utils.get_rolling_token_windows(tokens[1:], tokens[0], max_len, max_len - stride + 1)
            assert rolling_windows(tokens, max_len, stride) == [utils.make_disjoint_window(w) for w in theirs]


def test_batched_scores_equal_one_at_a_time():
    model, tok = tiny_setup(context_length=16)
    ids = tok.encode_ordinary(TEXT)
    requests = [(ids[:3], ids[3:5]), (ids[:20], ids[20:24]), (ids[5:6], ids[6:7]), (ids[:9], ids[9:30])]
    batched = score_continuations(model, requests, batch_size=3)
    for (context, continuation), (logprob, greedy) in zip(requests, batched):
        whole = (context + continuation)[-17:]  # cut on the left to the model's context (+1 target)
        n = min(len(continuation), len(whole) - 1)
        want = sum(token_logprob(model, whole[:k], whole[k]) for k in range(len(whole) - n, len(whole)))
        assert logprob == pytest.approx(want, abs=1e-4)
        with torch.no_grad():
            logits = model(torch.tensor([whole[:-1]]))[0, -n:]
        assert greedy == bool((logits.argmax(-1) == torch.tensor(whole[-n:])).all())
    assert score_continuations(model, [(ids[:2], [])]) == [(0.0, True)]  # nothing to predict


def test_encode_pair_moves_trailing_space_and_splits_after_context():
    tok = tiny_tokenizer()
    context, continuation = encode_pair(tok, "All: ", "Speak")
    assert context == tok.encode_ordinary("All:")
    assert context + continuation == tok.encode_ordinary("All: Speak")
    assert encode_pair(tok, "", "Speak") == ([tok.eot_id], tok.encode_ordinary("Speak"))


def test_tokenizer_without_end_of_text_leaves_the_first_token_unscored():
    from scratchlm.tokenizer import train_char

    tok = train_char(TEXT + "é")
    assert tok.eot_id is None
    model = tiny_model(tok.vocab_size, context_length=12)
    text = "é" + TEXT[:40]
    got = evaluate_text(model, tok, text)
    ids = tok.encode_ordinary(text)
    assert got["tokens"] == len(ids) - 1
    assert got["bytes"] == len(text.encode("utf-8")) - 2  # "é" is two bytes, and unscored
    assert got["loss"] * got["tokens"] == pytest.approx(slow_text_nll(model, ids, 12, 12), rel=1e-5)

"""The decoding loop: prefill the prompt, then one token at a time with the KV cache.

`decode_steps` is the one loop. It yields a `DecodeStep` per new token position: every row's token,
its log-probabilities and, given a tokenizer, its printable text. Everything else is built on it:
`generate_ids` collects the ids (and is what the tests hold against its slow twins: `use_cache=False`
recomputes the whole window at every step, `packed=False` runs the model's own forward with the cache
where the default runs each one-token step through `PackedDecoder`), `generate_stream` starts from text
prompts, and `generate` joins the streamed pieces into texts.

A batch of prompts is left-padded into one `(B, S)` buffer: every row's newest token sits in the same
column, so one forward serves them all. Pad slots are masked out of attention and each row counts its own
positions from its first real token, so a row computes exactly what its prompt alone would.

When prompt and new tokens outgrow the model's context, the window slides: the oldest half is dropped and
the cache is rebuilt from the rest (one prefill every `context/2` tokens, instead of a full recompute at
every token as nanoGPT's crop does). Both paths slide at the same steps, so they stay comparable.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from scratchlm.errors import ScratchError
from scratchlm.generate.packed import PackedDecoder, can_pack
from scratchlm.generate.sampling import SamplingConfig, make_generator, sample_next_logprobs
from scratchlm.generate.stream import TextStream

log = logging.getLogger(__name__)


@dataclass
class DecodeStep:
    """One decoding step of a batch: entry `row` of each field is about that row's new token.

    `logprobs`: the token's log-probability under the distribution it was drawn from (after repetition
    penalty, temperature, top-k, top-p); greedy decoding draws from a point mass, so 0.0.
    `raw_logprobs`: under the model itself, `log_softmax` of its unprocessed logits (the full vocabulary).
    Both are float32 `(B,)` tensors on the model's device, so reading them costs no sync unless used.
    `texts`: the text that became printable with this token ('' without a tokenizer, or while it is held
    back: part of a multi-byte character or of a possible stop string); the last step flushes the rest.
    `finished`: the row ended, at end-of-text or a stop string, at this step or before. A finished row is
    still decoded with the batch (its ids go on), but its text is ''. Reaching `max_new_tokens` is not
    finishing: the iteration simply ends.
    """

    token_ids: list[int]
    logprobs: torch.Tensor
    raw_logprobs: torch.Tensor
    texts: list[str]
    finished: list[bool]


def _fit_prompt(ids: list[int], context: int, policy: str, row: int) -> list[int]:
    """Cut a prompt that does not fit the context from the left (the default) or refuse it."""
    if len(ids) <= context:
        return list(ids)
    if policy == "error":
        raise ScratchError(
            f"prompt {row} is {len(ids)} tokens but the model's context is {context}; "
            "shorten it, or allow truncation (truncate='left', the CLI's default)"
        )
    log.warning(
        "prompt %d is %d tokens, longer than the model's context of %d: keeping its last %d tokens",
        row,
        len(ids),
        context,
        context,
    )
    return list(ids[-context:])


def decode_steps(
    model: torch.nn.Module,
    tokenizer,
    prompts: list[list[int]],
    config: SamplingConfig,
    *,
    eot_id: int | None = None,
    use_cache: bool = True,
    vocab_limit: int | None = None,
    packed: bool = True,
) -> Iterator[DecodeStep]:
    """Decode up to `config.max_new_tokens` steps after each prompt of token ids, yielding each step.

    A row finishes at `eot_id` (when `config.stop_at_eot`) or, given a `tokenizer` (None: ids only), at a
    stop string. It stops early once every row has finished. `vocab_limit` masks logits of ids the
    tokenizer cannot decode (a model vocabulary padded past it). Prompts are checked now, not on the first
    `next`, so a bad one fails where it is passed. `packed`: one-token steps through `PackedDecoder`
    (weights repacked at the call; the model's forward for a model it cannot pack, e.g. LoRA-wrapped).
    """
    if not prompts:
        return iter(())
    if any(len(p) == 0 for p in prompts):
        raise ScratchError("an empty prompt has no token to start from; give some text")
    context = model.config.context_length
    prompts = [_fit_prompt(p, context, config.truncate, i) for i, p in enumerate(prompts)]
    streams = [TextStream(tokenizer, config.stop) for _ in prompts] if tokenizer is not None else None
    decoder = PackedDecoder(model) if use_cache and packed and can_pack(model) else None
    return _decode(model, prompts, streams, config, eot_id, use_cache, vocab_limit, decoder)


@torch.inference_mode()
def _decode(
    model: torch.nn.Module,
    prompts: list[list[int]],
    streams: list[TextStream] | None,
    config: SamplingConfig,
    eot_id: int | None,
    use_cache: bool,
    vocab_limit: int | None,
    decoder: PackedDecoder | None,
) -> Iterator[DecodeStep]:
    context = model.config.context_length
    device = next(model.parameters()).device
    batch = len(prompts)
    start = max(len(p) for p in prompts)
    padded = any(len(p) < start for p in prompts)

    # Left-padded buffers over the whole context: tokens, real-token mask, per-row positions.
    tokens = torch.zeros(batch, context, dtype=torch.long)
    mask = torch.zeros(batch, context, dtype=torch.bool)
    for row, p in enumerate(prompts):
        tokens[row, start - len(p) : start] = torch.tensor(p)
        mask[row, start - len(p) : start] = True
    tokens, mask = tokens.to(device), mask.to(device)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, context): a row counts its real tokens

    seen = None
    if config.repetition_penalty != 1.0:
        seen = torch.zeros(batch, model.config.vocab_size, dtype=torch.bool, device=device)
        for row, p in enumerate(prompts):
            seen[row, torch.tensor(p, device=device)] = True
    generator = make_generator(config.seed, device)
    cache = model.new_cache(batch, context) if use_cache else None

    length, cached = start, 0  # filled columns; columns the cache already holds
    done = [False] * batch
    slid = False
    for step in range(config.max_new_tokens):
        # Padded batches pass masks and positions explicitly; otherwise the model's defaults are the same
        # thing, and cheaper (no mask means SDPA's causal fast path).
        window = slice(cached if use_cache else 0, length)
        if decoder is not None and cached == length - 1:  # one new token: the cache knows pads, positions
            logits = decoder(tokens[:, window], cache)  # (B, 1, V)
        else:
            logits = model(
                tokens[:, window],
                cache=cache,
                positions=positions[:, window] if padded else None,
                attention_mask=mask[:, :length] if padded else None,
            )  # (B, T, V)
        raw = logits[:, -1].float()  # (B, V)
        last = raw
        if vocab_limit is not None and vocab_limit < last.size(-1):
            last = raw.clone()
            last[:, vocab_limit:] = float("-inf")
        next_ids, logprobs = sample_next_logprobs(last, config, seen=seen, generator=generator)  # (B,) x2
        raw_logprobs = raw.gather(-1, next_ids[:, None]).squeeze(-1) - torch.logsumexp(raw, dim=-1)  # (B,)
        if use_cache:
            cached = length
        new = next_ids.tolist()  # the one host sync per step: stop checks and text need the ids
        for row, tok in enumerate(new):
            if done[row]:
                continue
            if config.stop_at_eot and eot_id is not None and tok == eot_id:
                done[row] = True
                if streams is not None:
                    streams[row].end()
            elif streams is not None:
                streams[row].push(tok)
                done[row] = streams[row].finished
        final = all(done) or step == config.max_new_tokens - 1
        texts = [""] * batch
        if streams is not None:
            for row, stream in enumerate(streams):
                if final:
                    stream.end()  # nothing follows: print what was held back
                texts[row] = stream.take()
        yield DecodeStep(new, logprobs, raw_logprobs, texts, list(done))
        if final:
            break
        if length == context:
            if not slid:  # once per call: a long generation slides every context/2 tokens
                log.warning(
                    "generation filled the model's context of %d tokens: continuing from the newest %d "
                    "(every %d tokens)",
                    context,
                    context // 2,
                    context - context // 2,
                )
            length, cached, slid = _slide_window(tokens, mask, positions, context), 0, True
            if cache is not None:
                cache.reset()
        tokens[:, length] = next_ids
        mask[:, length] = True
        positions[:, length] = positions[:, length - 1] + 1
        if seen is not None:
            seen[torch.arange(batch, device=device), next_ids] = True
        length += 1


def generate_ids(
    model: torch.nn.Module,
    prompts: list[list[int]],
    config: SamplingConfig,
    *,
    eot_id: int | None = None,
    use_cache: bool = True,
    vocab_limit: int | None = None,
    packed: bool = True,
) -> list[list[int]]:
    """Decode up to `config.max_new_tokens` tokens after each prompt; returns the new ids per row.

    A row ends at `eot_id` (not included, when `config.stop_at_eot`); see `decode_steps`.
    """
    out: list[list[int]] = [[] for _ in prompts]
    ended = [False] * len(prompts)
    steps = decode_steps(
        model,
        None,
        prompts,
        config,
        eot_id=eot_id,
        use_cache=use_cache,
        vocab_limit=vocab_limit,
        packed=packed,
    )
    for step in steps:
        for row, (tok, finished) in enumerate(zip(step.token_ids, step.finished)):
            if ended[row]:
                continue
            if not (finished and config.stop_at_eot and tok == eot_id):  # end-of-text is not kept
                out[row].append(tok)
            ended[row] = finished
    return out


def _slide_window(tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, context: int) -> int:
    """Keep the newest half of a full window, moved to column 0, with positions counted afresh."""
    keep = context // 2
    tokens[:, :keep] = tokens[:, context - keep :].clone()
    mask[:, :keep] = mask[:, context - keep :].clone()
    mask[:, keep:] = False
    positions.copy_((mask.long().cumsum(-1) - 1).clamp(min=0))
    return keep


def generate_stream(
    model: torch.nn.Module,
    tokenizer,
    prompts: list[str],
    config: SamplingConfig,
    *,
    use_cache: bool = True,
) -> Iterator[DecodeStep]:
    """Continue each text prompt, yielding every `DecodeStep` as it is decoded.

    `step.texts[row]` is the new printable piece of each row: a multi-byte character split over tokens
    arrives whole, text that may be the start of a stop string is held back until it is known not to be
    one, and a stop string itself never appears. The pieces of a row join to its `generate` text.
    """
    eot = getattr(tokenizer, "eot_id", None)
    ids = []
    for row, prompt in enumerate(prompts):
        encoded = tokenizer.encode(prompt)
        if not encoded:  # an empty prompt starts from end-of-text, as GPT-2 samples unconditionally
            if eot is None:
                raise ScratchError(f"prompt {row} is empty and the tokenizer has no <|endoftext|>; give text")
            encoded = [eot]
        ids.append(encoded)
    steps = decode_steps(
        model,
        tokenizer,
        ids,
        config,
        eot_id=eot,
        use_cache=use_cache,
        vocab_limit=getattr(tokenizer, "vocab_size", None),
    )
    return _in_eval_mode(model, steps)


def _in_eval_mode(model: torch.nn.Module, steps: Iterator[DecodeStep]) -> Iterator[DecodeStep]:
    """Decode with dropout off, and give the model back in its mode even if the reader stops early."""
    was_training = model.training
    model.eval()
    try:
        yield from steps
    finally:
        model.train(was_training)


def generate(
    model: torch.nn.Module,
    tokenizer,
    prompts: list[str],
    config: SamplingConfig,
    *,
    use_cache: bool = True,
) -> list[str]:
    """Continue each prompt; returns only the new text of each (without the prompt or a stop string).

    To print text as it comes, iterate `generate_stream` instead.
    """
    pieces: list[list[str]] = [[] for _ in prompts]
    for step in generate_stream(model, tokenizer, prompts, config, use_cache=use_cache):
        for row, piece in enumerate(step.texts):
            pieces[row].append(piece)
    return ["".join(row) for row in pieces]

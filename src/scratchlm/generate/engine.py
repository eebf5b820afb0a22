"""The decoding loop: prefill the prompt, then one token at a time with the KV cache.

`generate_ids` works on token ids and is what the tests hold against its slow twin (`use_cache=False`
recomputes the whole window at every step). `generate` wraps it with text: encoding, stop strings and
streaming (through `TextStream`).

A batch of prompts is left-padded into one `(B, S)` buffer: every row's newest token sits in the same
column, so one forward serves them all. Pad slots are masked out of attention and each row counts its own
positions from its first real token, so a row computes exactly what its prompt alone would.

When prompt and new tokens outgrow the model's context, the window slides: the oldest half is dropped and
the cache is rebuilt from the rest (one prefill every `context/2` tokens, instead of a full recompute at
every token as nanoGPT's crop does). Both paths slide at the same steps, so they stay comparable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from scratchlm.errors import ScratchError
from scratchlm.generate.sampling import SamplingConfig, make_generator, sample_next
from scratchlm.generate.stream import TextStream

log = logging.getLogger(__name__)

# on_token(row, text): called with each new piece of a row's text as soon as it is printable.
TokenCallback = Callable[[int, str], None]


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


@torch.inference_mode()
def generate_ids(
    model: torch.nn.Module,
    prompts: list[list[int]],
    config: SamplingConfig,
    *,
    eot_id: int | None = None,
    use_cache: bool = True,
    vocab_limit: int | None = None,
    on_step: Callable[[list[int]], list[bool]] | None = None,
) -> list[list[int]]:
    """Decode up to `config.max_new_tokens` tokens after each prompt; returns the new ids per row.

    A row ends at `eot_id` (not included, when `config.stop_at_eot`) or when `on_step`, given the
    step's new token of every row, answers True for it (the text layer uses this for stop strings).
    `vocab_limit` masks logits of ids the tokenizer cannot decode (a model vocabulary padded past it).
    """
    if not prompts:
        return []
    if any(len(p) == 0 for p in prompts):
        raise ScratchError("an empty prompt has no token to start from; give some text")
    context = model.config.context_length
    device = next(model.parameters()).device
    prompts = [_fit_prompt(p, context, config.truncate, i) for i, p in enumerate(prompts)]
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
    out: list[list[int]] = [[] for _ in range(batch)]
    done = [False] * batch
    slid = False
    for step in range(config.max_new_tokens):
        # Padded batches pass masks and positions explicitly; otherwise the model's defaults are the same
        # thing, and cheaper (no mask means SDPA's causal fast path).
        window = slice(cached if use_cache else 0, length)
        logits = model(
            tokens[:, window],
            cache=cache,
            positions=positions[:, window] if padded else None,
            attention_mask=mask[:, :length] if padded else None,
        )  # (B, T, V)
        last = logits[:, -1]  # (B, V)
        if vocab_limit is not None and vocab_limit < last.size(-1):
            last = last.clone()
            last[:, vocab_limit:] = float("-inf")
        next_ids = sample_next(last, config, seen=seen, generator=generator)  # (B,)
        if use_cache:
            cached = length
        new = next_ids.tolist()  # the one host sync per step: stop checks and streaming need the ids
        stopped = on_step(new) if on_step is not None else [False] * batch
        for row, tok in enumerate(new):
            if done[row]:
                continue
            if config.stop_at_eot and eot_id is not None and tok == eot_id:
                done[row] = True
                continue
            out[row].append(tok)
            done[row] = stopped[row]
        if all(done) or step == config.max_new_tokens - 1:
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
    return out


def _slide_window(tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, context: int) -> int:
    """Keep the newest half of a full window, moved to column 0, with positions counted afresh."""
    keep = context // 2
    tokens[:, :keep] = tokens[:, context - keep :].clone()
    mask[:, :keep] = mask[:, context - keep :].clone()
    mask[:, keep:] = False
    positions.copy_((mask.long().cumsum(-1) - 1).clamp(min=0))
    return keep


def generate(
    model: torch.nn.Module,
    tokenizer,
    prompts: list[str],
    config: SamplingConfig,
    on_token: TokenCallback | None = None,
    *,
    use_cache: bool = True,
) -> list[str]:
    """Continue each prompt; returns only the new text of each (without the prompt or a stop string).

    `on_token(row, text)` receives each row's text piece by piece as it becomes printable: a multi-byte
    character split over tokens arrives whole, and text that may be the start of a stop string is held
    back until it is known not to be one.
    """
    if not prompts:
        return []
    eot = getattr(tokenizer, "eot_id", None)
    ids = []
    for row, prompt in enumerate(prompts):
        encoded = tokenizer.encode(prompt)
        if not encoded:  # an empty prompt starts from end-of-text, as GPT-2 samples unconditionally
            if eot is None:
                raise ScratchError(f"prompt {row} is empty and the tokenizer has no <|endoftext|>; give text")
            encoded = [eot]
        ids.append(encoded)

    streams = [TextStream(tokenizer, config.stop) for _ in prompts]

    def on_step(new: list[int]) -> list[bool]:
        stopped = []
        for row, tok in enumerate(new):
            stream = streams[row]
            if stream.finished:  # ended earlier: generate_ids still decodes the row with the batch
                stopped.append(True)
                continue
            if config.stop_at_eot and tok == eot:
                stream.end()
            else:
                stream.push(tok)
            if on_token is not None and (piece := stream.take()):
                on_token(row, piece)
            stopped.append(stream.finished)
        return stopped

    was_training = model.training
    model.eval()
    try:
        generate_ids(
            model,
            ids,
            config,
            eot_id=eot,
            use_cache=use_cache,
            vocab_limit=getattr(tokenizer, "vocab_size", None),
            on_step=on_step,
        )
    finally:
        model.train(was_training)
    texts = []
    for row, stream in enumerate(streams):
        stream.end()
        if on_token is not None and (piece := stream.take()):
            on_token(row, piece)
        texts.append(stream.text)
    return texts

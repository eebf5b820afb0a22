"""The built-in instruction tasks as measurements of a chat model: held-out loss, exact match, speakers.

    scratchlm eval --ckpt runs/sft --tasks chat:arithmetic:digits=2,op=+ chat:strings:kind=reverse

For each task (`scratchlm.data.tasks` spec): the loss on its held-out conversations, counted on the
assistant's tokens as SFT trains them; for exact-answer tasks, the share of held-out prompts whose greedy
answer (up to `<|end|>`) the task's checker accepts; for the dialogue task, the share of greedy replies
that name a speaker of the play. SFT's own evaluation calls the same functions, so the figures of a
run and of `scratchlm eval` on its model are the same numbers.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from scratchlm.data.chat import chat_token_ids, fit_to_context, render_chat
from scratchlm.data.packing import IGNORE, Rows, example, pack
from scratchlm.data.tasks import get_task
from scratchlm.generate.config import SamplingConfig
from scratchlm.generate.engine import generate_ids

BATCH = 32  # prompts decoded together


@torch.no_grad()
def masked_loss(model, rows: Rows, batch_size: int = BATCH) -> float:
    """Mean loss over the counted targets of packed rows (the assistant's tokens)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        inputs, targets, documents = rows.take(np.arange(start, min(start + batch_size, len(rows))), device)
        logits = model(inputs, document_ids=documents)  # (b, T, V)
        loss = F.cross_entropy(
            logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum"
        )
        total += float(loss)
        count += int((targets != IGNORE).sum())
    return total / max(1, count)


def heldout_rows(conversations, tokenizer, context: int) -> Rows:
    """Held-out conversations that fit the context, as packed rows."""
    fitted = fit_to_context(conversations, tokenizer, context + 1)
    return pack([example(*render_chat(c, tokenizer)) for c in fitted.conversations], context)


@torch.no_grad()
def answer_score(model, tokenizer, task, conversations, max_new_tokens: int) -> tuple[str, float]:
    """(figure name, value): exact match for a task with a checker, else the share naming a speaker."""
    end = chat_token_ids(tokenizer)["<|end|>"]
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    prompts = [render_chat(c[:-1], tokenizer, add_generation_prompt=True)[0] for c in conversations]
    answers = []
    for start in range(0, len(prompts), BATCH):
        answers += generate_ids(model, prompts[start : start + BATCH], sampling, eot_id=end)
    texts = [tokenizer.decode(a) for a in answers]
    if hasattr(task, "check"):
        return "exact", sum(task.check(c, t) for c, t in zip(conversations, texts)) / max(1, len(texts))
    return "names_speaker", sum(map(task.names_a_speaker, texts)) / max(1, len(texts))


def chat_task_figures(
    model, tokenizer, spec: str, n: int = 200, max_new_tokens: int = 48
) -> dict[str, float]:
    """{"loss", "exact" or "names_speaker", "examples"} of one task on `n` held-out conversations."""
    task = get_task(spec)
    conversations = task.examples("heldout", n, 0)
    was_training = model.training
    model.eval()
    try:
        loss = masked_loss(model, heldout_rows(conversations, tokenizer, model.config.context_length))
        name, value = answer_score(model, tokenizer, task, conversations, max_new_tokens)
    finally:
        model.train(was_training)
    return {"loss": loss, name: value, "examples": len(conversations)}

"""What SFT trains and is scored on: the mixture of tasks and files, held-out sets, pretraining text."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from scratchlm.data import load_corpus
from scratchlm.data.chat import fit_to_context, render_chat
from scratchlm.data.chat_readers import read_conversations
from scratchlm.data.tasks import get_task
from scratchlm.eval.scoring import rolling_windows, score_continuations
from scratchlm.finetune.config import SFTConfig, SFTDataConfig
from scratchlm.generate.config import SamplingConfig
from scratchlm.generate.engine import generate_ids
from scratchlm.train.run_dir import RunDir

PTX_VAL_TOKENS = 32_768  # validation tokens scored for the forgetting figure: a few seconds on a CPU


def sft_mixture(cfg: SFTDataConfig, split: str, seed: int, tokenizer, say=print) -> list[list[dict]]:
    """`cfg.examples` training conversations, each source's share by its weight, in a seeded order."""
    sources = len(cfg.tasks) + len(cfg.files)
    weights = np.asarray(cfg.weights or [1.0] * sources, dtype=np.float64)
    counts = np.floor(cfg.examples * weights / weights.sum()).astype(int)
    out = []
    for spec, n in zip(cfg.tasks, counts):
        out += get_task(spec).examples(split, int(n), seed)
    rng = np.random.default_rng(seed)
    for path, n in zip(cfg.files, counts[len(cfg.tasks) :]):
        read = read_conversations(path, skip_invalid=cfg.skip_invalid)
        if read.skipped:
            say(f"sft: {path}: {read.summary()}")
        conversations = read.conversations
        if n and conversations:  # a file's share: its conversations drawn in turn, reshuffled per pass
            order = np.concatenate(
                [rng.permutation(len(conversations)) for _ in range(-(-n // len(conversations)))]
            )
            out += [conversations[i] for i in order[:n]]
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def heldout_sets(cfg: SFTDataConfig, tokenizer) -> dict[str, list[list[dict]]]:
    """Each task's held-out conversations (files have no held-out split: they train only)."""
    return {spec: get_task(spec).examples("heldout", cfg.heldout, 0) for spec in cfg.tasks}


def render_all(conversations, tokenizer, limit: int, cfg: SFTDataConfig, say=print):
    """(ids, loss mask) of each conversation, at most `limit` tokens: the history truncated or dropped."""
    fitted = fit_to_context(conversations, tokenizer, limit, overflow=cfg.overflow)
    if fitted.truncated or fitted.dropped:
        say(f"sft: {fitted.summary()}")
    return [render_chat(messages, tokenizer) for messages in fitted.conversations]


def ptx_tokens(cfg: SFTDataConfig, base_dir, tokenizer) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(train, validation) token arrays of the pretraining corpus: the base run's, unless named."""
    name = cfg.ptx_corpus
    if not name:
        run = RunDir.of_model(base_dir)
        name = ((run.read_config().get("data") or {}).get("corpus")) if run else None
    if not name:
        return None, None
    train, val = load_corpus(name).split()
    encode = lambda docs: np.asarray([t for d in docs for t in tokenizer.encode_ordinary(d)], dtype=np.int64)  # noqa: E731
    return (encode(train) if cfg.ptx else None), encode(val)[: PTX_VAL_TOKENS + 1]


@torch.no_grad()
def pretrain_loss(model, tokens: np.ndarray, batch_size: int) -> float:
    """Mean nats per token of pretraining validation text (the forgetting figure)."""
    windows = rolling_windows(tokens.tolist(), model.config.context_length)
    scores = score_continuations(model, windows, batch_size=batch_size)
    return -sum(s for s, _ in scores) / max(1, len(tokens) - 1)


@torch.no_grad()
def task_scores(model, tokenizer, cfg: SFTConfig, end_id: int) -> dict[str, float]:
    """Each exact-answer task's held-out accuracy and the dialogue task's speaker rate (greedy decoding)."""
    figures = {}
    sampling = SamplingConfig(max_new_tokens=cfg.eval.max_new_tokens, temperature=0.0)
    for spec in cfg.data.tasks:
        task = get_task(spec)
        judge = getattr(task, "check", None) or getattr(task, "names_a_speaker", None)
        if judge is None:
            continue
        conversations = task.examples("heldout", cfg.eval.max_examples, 0)
        prompts = [render_chat(c[:-1], tokenizer, add_generation_prompt=True)[0] for c in conversations]
        answers = []
        for start in range(0, len(prompts), 32):
            answers += generate_ids(model, prompts[start : start + 32], sampling, eot_id=end_id)
        texts = [tokenizer.decode(a) for a in answers]
        if hasattr(task, "check"):
            hits = [task.check(c, t) for c, t in zip(conversations, texts)]
            figures[f"exact:{spec}"] = sum(hits) / len(hits)
        else:
            figures[f"names_speaker:{spec}"] = sum(map(task.names_a_speaker, texts)) / len(texts)
    return figures


@torch.no_grad()
def masked_loss(model, rows, batch_size: int, device) -> float:
    """Mean loss over the counted targets of packed rows."""
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        inputs, targets, documents = rows.take(np.arange(start, min(start + batch_size, len(rows))), device)
        logits = model(inputs, document_ids=documents)  # (b, T, V)
        total += float(F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100,
                                       reduction="sum"))  # fmt: skip
        count += int((targets != -100).sum())
    return total / max(1, count)

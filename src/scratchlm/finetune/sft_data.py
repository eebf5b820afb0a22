"""What SFT trains and is scored on: the mixture of tasks and files, held-out sets, pretraining text."""

from __future__ import annotations

import numpy as np
import torch

from scratchlm.data import load_corpus
from scratchlm.data.chat import fit_to_context, render_chat
from scratchlm.data.chat_readers import read_conversations
from scratchlm.data.corpora import hold_out
from scratchlm.data.tasks import get_task
from scratchlm.eval.scoring import rolling_windows, score_continuations
from scratchlm.finetune.config import SFTDataConfig
from scratchlm.train.run_dir import RunDir

PTX_VAL_TOKENS = 32_768  # validation tokens scored for the forgetting figure: a few seconds on a CPU
HELDOUT_SHARE = 10  # a chat file holds out at most one record in this many: a small file still trains


def read_chat_file(path, cfg: SFTDataConfig, say=print) -> tuple[list[list[dict]], list[list[dict]]]:
    """(training, held-out) conversations of one `data.files` entry. The `data.heldout` records whose id
    hashes lowest (at most a tenth of the file's) are held out, with every conversation made from them:
    the same ones on every run and machine, and never trained on."""
    read = read_conversations(path, skip_invalid=cfg.skip_invalid)
    if read.skipped or read.unusable:
        say(f"sft: {path}: {read.summary()}")
    train, heldout = read.split(min(cfg.heldout, len(set(read.ids)) // HELDOUT_SHARE))
    return train.conversations, heldout.conversations


def sft_mixture(
    cfg: SFTDataConfig, split: str, seed: int, tokenizer, say=print, files=None
) -> list[list[dict]]:
    """`cfg.examples` conversations of `split` (train, heldout), each source's share by its weight, in a
    seeded order. `files`: each file's `read_chat_file`, when the caller has read them already."""
    sources = len(cfg.tasks) + len(cfg.files)
    weights = np.asarray(cfg.weights or [1.0] * sources, dtype=np.float64)
    counts = np.floor(cfg.examples * weights / weights.sum()).astype(int)
    out = []
    for spec, n in zip(cfg.tasks, counts):
        out += get_task(spec).examples(split, int(n), seed)
    rng = np.random.default_rng(seed)
    files = files if files is not None else [read_chat_file(path, cfg, say) for path in cfg.files]
    for (train, heldout), n in zip(files, counts[len(cfg.tasks) :]):
        conversations = heldout if split == "heldout" else train
        if n and conversations:  # a file's share: its conversations drawn in turn, reshuffled per pass
            order = np.concatenate(
                [rng.permutation(len(conversations)) for _ in range(-(-n // len(conversations)))]
            )
            out += [conversations[i] for i in order[:n]]
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def render_all(conversations, tokenizer, limit: int, cfg: SFTDataConfig, say=print):
    """(ids, loss mask) of each conversation, at most `limit` tokens: the history truncated or dropped."""
    fitted = fit_to_context(conversations, tokenizer, limit, overflow=cfg.overflow)
    if fitted.truncated or fitted.dropped:
        say(f"sft: {fitted.summary()}")
    return [render_chat(messages, tokenizer) for messages in fitted.conversations]


def ptx_tokens(cfg: SFTDataConfig, base_dir, tokenizer) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(train, validation) token arrays of the pretraining corpus: the base run's, unless named."""
    name, heldout = cfg.ptx_corpus, []
    if not name:
        run = RunDir.of_model(base_dir)
        data = (run.read_config().get("data") or {}) if run else {}
        name, heldout = data.get("corpus"), data.get("heldout") or []
    if not name:
        return None, None
    corpus = load_corpus(name)
    if heldout:
        hold_out(corpus, heldout)  # the base's validation text stays unseen by SFT too
    train, val = corpus.split()
    encode = lambda docs: np.asarray([t for d in docs for t in tokenizer.encode_ordinary(d)], dtype=np.int64)  # noqa: E731
    return (encode(train) if cfg.ptx else None), encode(val)[: PTX_VAL_TOKENS + 1]


@torch.no_grad()
def pretrain_loss(model, tokens: np.ndarray, batch_size: int) -> float:
    """Mean nats per token of pretraining validation text (the forgetting figure)."""
    windows = rolling_windows(tokens.tolist(), model.config.context_length)
    scores = score_continuations(model, windows, batch_size=batch_size)
    return -sum(s for s, _ in scores) / max(1, len(tokens) - 1)

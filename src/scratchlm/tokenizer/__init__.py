"""Tokenizers: character-level and byte-level BPE (trained here, encoded through tiktoken).

`train_bpe` / `train_char` build one, `load_tokenizer(dir)` reads any saved one back, `load_gpt2(path)`
reads GPT-2's published vocabulary. The saved format is documented in `scratchlm.tokenizer.io`.
"""

from scratchlm.tokenizer.base import (
    CHAT_SPECIAL_TOKENS,
    DEFAULT_SPECIAL_TOKENS,
    ENDOFTEXT,
    Tokenizer,
)
from scratchlm.tokenizer.bpe import GPT2_PATTERN, GPT4_PATTERN, BPETokenizer
from scratchlm.tokenizer.bpe_train import train_bpe
from scratchlm.tokenizer.char import CharTokenizer, train_char
from scratchlm.tokenizer.gpt2 import find_gpt2_files, load_gpt2
from scratchlm.tokenizer.io import load_tokenizer

__all__ = [
    "BPETokenizer",
    "CHAT_SPECIAL_TOKENS",
    "CharTokenizer",
    "DEFAULT_SPECIAL_TOKENS",
    "ENDOFTEXT",
    "GPT2_PATTERN",
    "GPT4_PATTERN",
    "Tokenizer",
    "find_gpt2_files",
    "load_gpt2",
    "load_tokenizer",
    "train_bpe",
    "train_char",
]

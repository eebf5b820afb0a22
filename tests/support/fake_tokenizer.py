"""A byte-level stand-in tokenizer for the data tests (no tests here).

The data stage only needs the tokenizer protocol (encode_ordinary, decode, vocab_size, eot_id,
fingerprint); a tokenizer whose ids are the UTF-8 bytes is obviously correct, so shard and loader tests
do not depend on the BPE code and can check every token by hand.
"""

from __future__ import annotations

import hashlib

EOT = "<|endoftext|>"


class ByteTokenizer:
    def __init__(self, vocab_size: int = 257, eot: bool = True):
        assert vocab_size >= 257
        self.vocab_size = vocab_size
        self.eot_id = vocab_size - 1 if eot else None
        self.special_tokens = {EOT: self.eot_id} if eot else {}

    def encode_ordinary(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode(self, text: str) -> list[int]:
        return self.encode_ordinary(text)

    def decode(self, ids) -> str:
        out, run = [], bytearray()
        for i in ids:
            if i == self.eot_id:
                out.append(run.decode("utf-8") + EOT)
                run = bytearray()
            else:
                run.append(int(i))
        return "".join(out) + run.decode("utf-8")

    def fingerprint(self) -> str:
        return hashlib.sha256(f"bytes/{self.vocab_size}/{self.eot_id}".encode()).hexdigest()

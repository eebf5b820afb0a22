"""Hashed n-gram input embeddings: each position also looks up a vector for its last n tokens.

    x_t = token_embedding[t_t] + sum over orders n of  E_n[hash(t_{t-n+1}, ..., t_t) mod buckets]

A small model spends its first layer(s) learning which characters came just before; a table lookup gives
that for free, at no matmul cost (the n-gram hash embeddings of BLT, Pagnoni et al. 2024, put at the input
of a token model). On Tiny Shakespeare a 4 x 128 character model gains ~0.03 nats at equal steps from the
trigram table (docs/experiments.md). Tokens before the start of a sequence are a reserved id, `vocab_size`,
so a window that starts mid-text is treated like a text start, in training and when scored alike.

The hash is a polynomial in the token ids, reduced mod `buckets` at every step so int64 never overflows;
distinct n-grams may share a bucket (the table is trained through the collisions, as in hashing tricks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Odd multipliers, one per step back: the hash of (a, b) differs from that of (b, a).
_MULTIPLIERS = (1000003, 999983, 1000033, 999979, 1000037, 999961, 1000039)


class NgramEmbedding(nn.Module):
    def __init__(self, vocab_size: int, dim: int, orders: list[int], buckets: int):
        super().__init__()
        self.orders, self.buckets, self.start_id = list(orders), buckets, vocab_size
        # Uninitialized like the token embedding: the model's reset_parameters fills every nn.Embedding.
        self.tables = nn.ModuleList(
            nn.Embedding(buckets, dim, _weight=torch.empty(buckets, dim)) for _ in self.orders
        )

    @property
    def history(self) -> int:
        """How many earlier tokens the largest order needs (what a KV cache must remember)."""
        return max(self.orders) - 1

    def bucket_ids(
        self, input_ids: torch.Tensor, positions: torch.Tensor, earlier: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """One (B, T) tensor of bucket ids per order.

        `positions` (B, T) say where each token is in its sequence: the token k steps back exists only
        where position >= k (a left-padded row starts at position 0, so its pads are never read).
        `earlier` (B, h): the tokens just before `input_ids` (from a KV cache), or None.
        """
        T, h = input_ids.shape[1], self.history
        seq = input_ids if earlier is None else torch.cat([earlier, input_ids], dim=1)
        pad = h + seq.shape[1] - T  # index in `padded` of the first new token
        padded = F.pad(seq, (h, 0), value=self.start_id)
        back = []  # back[k - 1]: the token k steps before each new token, (B, T)
        for k in range(1, h + 1):
            token = padded[:, pad - k : pad - k + T]
            back.append(torch.where(positions >= k, token, self.start_id))
        ids = []
        for n in self.orders:
            hashed = input_ids % self.buckets
            for k in range(1, n):
                hashed = (hashed * _MULTIPLIERS[k - 1] + back[k - 1]) % self.buckets
            ids.append(hashed)
        return ids

    def forward(self, input_ids, positions, earlier=None) -> torch.Tensor:  # -> (B, T, dim)
        ids = self.bucket_ids(input_ids, positions.expand_as(input_ids), earlier)
        out = self.tables[0](ids[0])
        for table, bucket in zip(self.tables[1:], ids[1:]):
            out = out + table(bucket)
        return out

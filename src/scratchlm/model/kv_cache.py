"""The key/value cache for incremental decoding.

Decoding one token at a time would recompute the keys and values of the whole prefix at every step;
the cache keeps them instead. One preallocated buffer per layer, (B, n_kv_heads, max_len, head_dim) for
keys and for values: with grouped-query attention only the n_kv_heads heads are stored, which is the
point of GQA (the cache shrinks by n_heads / n_kv_heads).

Slots and positions are distinct. A slot is where a token's key sits in the buffer: every row of the
batch fills slots 0, 1, 2, ... together. A position is what RoPE or the position embedding sees: per row,
so a left-padded row can start its real tokens at position 0 in a later slot. The cache remembers, per
row, the next position (`next_position`) and which slots hold real tokens (`mask`), so after a prompt
given with explicit positions and an attention mask, decoding can go on with neither.

Made by `Transformer.new_cache(...)`; used by passing `cache=` to the model's forward.
"""

from __future__ import annotations

import torch

from scratchlm.errors import ScratchError


class KVCache:
    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_kv_heads: int,
        head_dim: int,
        max_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.mask = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)  # real-token slots
        self.next_position = torch.zeros(batch_size, dtype=torch.long, device=device)
        # The token ids of the filled slots, kept for models with n-gram input embeddings (which read the
        # tokens before a new one); others leave them unwritten.
        self.tokens = torch.zeros(batch_size, max_len, dtype=torch.long, device=device)
        self.length = 0  # slots filled, the same for every row
        self.padded = False  # some filled slot holds a pad (then every later step needs a mask)
        self.batch_size = batch_size
        self.max_len = max_len

    def __len__(self) -> int:
        return self.length

    def reserve(self, n_new: int) -> None:
        """Fail clearly before a write that would overflow the buffer."""
        if self.length + n_new > self.max_len:
            raise ScratchError(
                f"KV cache full: {self.length} + {n_new} tokens exceed its {self.max_len} slots "
                "(the model's context); shorten the prompt or the number of new tokens"
            )

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys/values (B, n_kv, T, hd) of `layer` after the filled slots.

        Returns every key and value so far, (B, n_kv, length + T, hd). `length` itself moves on only in
        `advance()`, once all layers have written, so each layer writes at the same slots.
        """
        start, end = self.length, self.length + k.shape[2]
        self.keys[layer][:, :, start:end] = k.to(self.keys[layer].dtype)
        self.values[layer][:, :, start:end] = v.to(self.values[layer].dtype)
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(
        self,
        n_new: int,
        positions: torch.Tensor,
        new_mask: torch.Tensor | bool = True,
        token_ids: torch.Tensor | None = None,
    ) -> None:
        """Record that n_new slots were filled: (B, n_new) positions, (B, n_new) bool real-token mask,
        and the (B, n_new) token ids that filled them."""
        self.mask[:, self.length : self.length + n_new] = new_mask
        if token_ids is not None:
            self.tokens[:, self.length : self.length + n_new] = token_ids
        if isinstance(new_mask, torch.Tensor) and not self.padded:
            self.padded = not bool(new_mask.all())
        self.next_position = positions[:, -1] + 1
        self.length += n_new

    def reset(self) -> None:
        """Empty the cache for reuse with a new batch of the same size (buffers are kept)."""
        self.length = 0
        self.padded = False
        self.mask.zero_()
        self.next_position.zero_()

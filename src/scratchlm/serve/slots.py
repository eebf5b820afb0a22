"""The batch's KV cache with rows that join and leave between decode steps (continuous batching).

One `KVCache` is allocated once at full capacity; the model sees a view of its first `size` rows, so a
decode step costs what the live requests cost, not what the capacity would. Its layout is the decoding
engine's: every row writes its next key into the same slot, `length`, and a row's tokens fill one run of
slots ending there. The slots before a row's run are pads, masked out of attention, and each row counts
its own positions, so a row computes what its request alone would (the engine's left padding).

- `join`: a request prefilled alone, in its own cache, is copied in right-aligned at `length`. A prompt
  longer than `length` first shifts every row right to make room.
- `leave`: the last row moves into the freed one (a copy of one row), so live rows stay contiguous.
- `compact`: when the rows' common leading pads are wide (the oldest request left) or the buffer is full,
  every row shifts left by the narrowest pad; attention then reads `length` slots fewer.

Layouts: keys and values (capacity, n_kv_heads, max_len, head_dim) per layer; mask and tokens
(capacity, max_len); positions (capacity,).
"""

from __future__ import annotations

import torch


class BatchSlots:
    def __init__(self, model: torch.nn.Module, capacity: int, max_len: int | None = None):
        self.cache = model.new_cache(capacity, max_len)
        self.capacity = capacity
        self.max_len = self.cache.max_len
        self._keys, self._values = list(self.cache.keys), list(self.cache.values)
        self._mask, self._tokens = self.cache.mask, self.cache.tokens
        self._next_position = self.cache.next_position.clone()
        self.starts: list[int] = []  # each live row's first real slot
        self._view()

    @property
    def size(self) -> int:
        return len(self.starts)

    @property
    def length(self) -> int:
        return self.cache.length

    def span(self, row: int) -> int:
        """Slots row `row` fills: its prompt and every token fed since."""
        return self.cache.length - self.starts[row]

    def join(self, prefill) -> int:
        """Copy a one-row cache (a prompt prefilled alone) in as a new last row; returns its index."""
        assert self.size < self.capacity, "join on a full batch"
        n = prefill.length
        assert 0 < n <= self.max_len
        self._save_positions()
        if self.size == 0:
            self.cache.length = n
        elif n > self.cache.length:
            self._shift(n - self.cache.length)
        row, end = self.size, self.cache.length
        start = end - n
        for layer in range(len(self._keys)):
            self._keys[layer][row, :, start:end] = prefill.keys[layer][0, :, :n]
            self._values[layer][row, :, start:end] = prefill.values[layer][0, :, :n]
        self._mask[row] = False
        self._mask[row, start:end] = prefill.mask[0, :n]
        self._tokens[row, start:end] = prefill.tokens[0, :n]
        self._next_position[row] = prefill.next_position[0]
        self.starts.append(start)
        self._view()
        return row

    def leave(self, row: int) -> None:
        """Free `row`; the last row takes its place (callers move their own per-row state the same way)."""
        self._save_positions()
        last = self.size - 1
        if row != last:
            end = self.cache.length
            for layer in range(len(self._keys)):
                self._keys[layer][row, :, :end] = self._keys[layer][last, :, :end]
                self._values[layer][row, :, :end] = self._values[layer][last, :, :end]
            self._mask[row, :end] = self._mask[last, :end]
            self._tokens[row, :end] = self._tokens[last, :end]
            self._next_position[row] = self._next_position[last]
            self.starts[row] = self.starts[last]
        self.starts.pop()
        if not self.starts:
            self.cache.length = 0
        self._view()
        self.compact(only_if_wide=True)

    def compact(self, only_if_wide: bool = False) -> None:
        """Drop the leading slots that are pads in every row. `only_if_wide`: only when they are at least
        an eighth of the buffer (a shift copies the whole cache, so narrow pads are cheaper to keep)."""
        if not self.starts:
            return
        drop = min(self.starts)
        if drop == 0 or (only_if_wide and drop < self.max_len // 8):
            return
        self._save_positions()
        self._shift(-drop)
        self._view()

    def _shift(self, by: int) -> None:
        """Move every live row's slots `by` to the right (negative: left); the vacated slots are pads."""
        live, end = self.size, self.cache.length
        src = slice(0, end) if by > 0 else slice(-by, end)
        dst = slice(by, end + by) if by > 0 else slice(0, end + by)
        for buffers in (self._keys, self._values):
            for buf in buffers:
                buf[:live, :, dst] = buf[:live, :, src].clone()
        self._mask[:live, dst] = self._mask[:live, src].clone()
        self._tokens[:live, dst] = self._tokens[:live, src].clone()
        if by > 0:
            self._mask[:live, :by] = False
        self.starts = [s + by for s in self.starts]
        self.cache.length = end + by

    def _save_positions(self) -> None:
        # The model's `advance` rebinds `next_position` to a new tensor every step: copy it back first.
        if self.size:
            self._next_position[: self.size] = self.cache.next_position[: self.size]

    def _view(self) -> None:
        """Point the cache the model reads at the live rows."""
        live = self.size
        c = self.cache
        c.keys = [k[:live] for k in self._keys]
        c.values = [v[:live] for v in self._values]
        c.mask, c.tokens = self._mask[:live], self._tokens[:live]
        c.next_position = self._next_position[:live].clone()
        c.batch_size = live
        c.padded = any(s > 0 for s in self.starts)

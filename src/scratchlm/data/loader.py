"""The batch loader: memory-mapped shards in, `(inputs, targets)` int64 tensors of shape (B, T) out.

Every batch is a pure function of (seed, step, rank, world_size): the loader keeps no random state beyond
its step counter. That makes resumption exact (`state_dict()` is the step) and lets the ranks of a
distributed run split one global batch of `batch_size * world_size` rows, rank r taking rows
[r*B, (r+1)*B): the ranks read different windows, and world_size=2 with batch B reads exactly the rows
world_size=1 reads with batch 2B.

Modes:
- "random": windows of T+1 tokens at uniformly random offsets (nanoGPT's pretraining sampler).
- "packed": document-aligned rows, shuffled once per epoch. A row starts at a document start, or, in a
  document longer than a row, every T tokens after its start (so no token is out of reach); it runs on
  across the `<|endoftext|>` separator into the next document when the document is shorter than a row.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from scratchlm.data.shards import check_fingerprint, read_manifest
from scratchlm.errors import ScratchError
from scratchlm.fileio import sha256_file

MODES = ("random", "packed")


class TokenLoader:
    """Batches from one split of a shard folder made by `prepare` (see the module docstring)."""

    def __init__(
        self,
        shard_dir: str | os.PathLike,
        split: str,
        batch_size: int,
        context_length: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        mode: str = "random",
        device: str | torch.device = "cpu",
        expect_fingerprint: str | None = None,
        verify: bool = False,
    ):
        if mode not in MODES:
            raise ScratchError(f"loader mode must be one of {', '.join(MODES)}, got {mode!r}")
        if batch_size < 1 or context_length < 1:
            raise ScratchError(
                f"batch_size and context_length must be >= 1, got {batch_size}, {context_length}"
            )
        if not 0 <= rank < world_size:
            raise ScratchError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.dir = Path(shard_dir)
        self.manifest = read_manifest(self.dir)
        check_fingerprint(self.manifest, expect_fingerprint, str(self.dir))
        if split not in self.manifest["splits"]:
            raise ScratchError(
                f"{self.dir} has no split {split!r}; splits: {', '.join(self.manifest['splits'])}"
            )
        self.split, self.batch_size, self.context_length = split, batch_size, context_length
        self.seed, self.rank, self.world_size, self.mode = seed, rank, world_size, mode
        self.device = torch.device(device)
        self.dtype = np.dtype(self.manifest["dtype"]).newbyteorder("<")
        self.step = 0

        info = self.manifest["splits"][split]
        self._shards: list[np.memmap] = []
        self._starts: list[int] = []  # global offset of each shard's first token
        total = 0
        for shard in info["shards"]:
            path = self.dir / shard["file"]
            self._check_file(path, shard["tokens"] * self.dtype.itemsize, shard["sha256"], verify)
            self._shards.append(np.memmap(path, dtype=self.dtype, mode="r"))
            self._starts.append(total)
            total += shard["tokens"]
        assert total == info["tokens"], "manifest token counts disagree"
        self.num_tokens = total
        if total < context_length + 1:
            raise ScratchError(
                f"{self.dir}: split {split!r} has {total} tokens, too few for one window of "
                f"context_length+1 = {context_length + 1}; use a shorter context or a bigger corpus"
            )
        self._rows: np.ndarray | None = None
        if mode == "packed":
            self._rows = self._packed_rows(info)
        self._perm_cache: dict[int, np.ndarray] = {}

    # ---- files ----
    def _check_file(self, path: Path, nbytes: int, sha256: str | None, verify: bool) -> None:
        if not path.is_file():
            raise ScratchError(f"shard {path} is missing; the folder is damaged: run scratchlm prepare again")
        size = path.stat().st_size
        if size != nbytes:
            raise ScratchError(
                f"shard {path} has {size:,} bytes but the manifest says {nbytes:,}; "
                "the folder is damaged or mixed: run scratchlm prepare again"
            )
        if verify and sha256 is not None and sha256_file(path) != sha256:
            raise ScratchError(f"shard {path} fails its sha256 check; run scratchlm prepare again")

    def _read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start+length) of the split, across shard boundaries when needed."""
        i = bisect.bisect_right(self._starts, start) - 1
        parts, need = [], length
        while need:
            local = start - self._starts[i]
            piece = self._shards[i][local : local + need]
            parts.append(piece)
            need -= len(piece)
            start += len(piece)
            i += 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    # ---- packed rows ----
    def _packed_rows(self, info: dict) -> np.ndarray:
        index = self.dir / info["doc_starts"]["file"]
        self._check_file(index, info["documents"] * 8, info["doc_starts"]["sha256"], False)
        starts = np.fromfile(index, dtype="<i8")  # (D,) token offset of each document
        T, N = self.context_length, self.num_tokens
        sep = 1 if self.manifest.get("eot_id") is not None else 0
        ends = np.append(starts[1:] - sep, N)  # (D,) end of each document's own tokens
        counts = np.maximum(1, -(-(ends - starts) // T))  # rows per document: ceil(length / T)
        first = np.repeat(starts, counts)
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        rows = first + within * T  # (R,) a document start, or T, 2T, ... tokens into a long document
        rows = rows[rows + T + 1 <= N]  # a row needs T+1 tokens (inputs and shifted targets)
        if len(rows) == 0:
            raise ScratchError(
                f"{self.dir}: split {self.split!r} has no room for a packed row of {T + 1} tokens"
            )
        return rows

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm_cache:
            if len(self._perm_cache) > 4:
                self._perm_cache.clear()
            rng = np.random.default_rng([self.seed, epoch])
            self._perm_cache[epoch] = rng.permutation(len(self._rows))
        return self._perm_cache[epoch]

    # ---- batches ----
    def _offsets(self, step: int) -> np.ndarray:
        """(B,) start offsets of this rank's rows at `step`."""
        B, W, r = self.batch_size, self.world_size, self.rank
        if self.mode == "random":
            rng = np.random.default_rng([self.seed, step])
            return rng.integers(0, self.num_tokens - self.context_length, size=B * W)[r * B : (r + 1) * B]
        g = step * B * W + r * B + np.arange(B)  # global row indices in the endless epoch sequence
        n = len(self._rows)
        return np.asarray([self._rows[self._permutation(int(k // n))[k % n]] for k in g])

    def _to_tensors(self, windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.from_numpy(windows.astype(np.int64))  # (B, T+1)
        x, y = t[:, :-1].contiguous(), t[:, 1:].contiguous()  # (B, T) each
        if self.device.type == "cuda":  # pinned host memory lets the copy overlap the GPU's work
            x, y = x.pin_memory(), y.pin_memory()
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.context_length
        windows = np.stack([self._read(int(o), T + 1) for o in self._offsets(self.step)])  # (B, T+1)
        self.step += 1
        return self._to_tensors(windows)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.next_batch()

    # ---- resumption ----
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "seed": self.seed,
            "mode": self.mode,
            "split": self.split,
            "batch_size": self.batch_size,
            "context_length": self.context_length,
            "world_size": self.world_size,
            "tokenizer_fingerprint": self.manifest["tokenizer_fingerprint"],
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue where the saved loader stopped. Its settings must match, or the batches would not."""
        mine = self.state_dict()
        # Rank r of W reads rows [r*B, (r+1)*B) of a global batch of B*W rows, so a run may resume on
        # another number of ranks as long as B*W, the global batch, is unchanged.
        rows = lambda s: (s.get("batch_size") or 0) * (s.get("world_size") or 0)  # noqa: E731
        if rows(state) != rows(mine):
            raise ScratchError(
                f"cannot resume the loader: saved {state.get('batch_size')} rows x {state.get('world_size')} "
                f"ranks but this loader reads {self.batch_size} x {self.world_size}; resume with the same "
                "global batch"
            )
        for key in mine:
            if key not in ("step", "batch_size", "world_size") and state.get(key) != mine[key]:
                raise ScratchError(
                    f"cannot resume the loader: saved {key}={state.get(key)!r} but this loader has "
                    f"{key}={mine[key]!r}; resume with the same data settings"
                )
        self.step = int(state["step"])

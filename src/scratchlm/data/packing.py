"""Rows for supervised fine-tuning: rendered conversations packed into fixed-length rows without cross-talk.

A conversation rendered by the chat template is `ids` and a loss mask (1 on assistant tokens). As a
training example it is inputs `ids[:-1]` and targets `ids[1:]`, a target counting only where the mask of
the token it predicts is 1 (`IGNORE` elsewhere). Packing lays several such examples end to end in one row
of `length` positions, each with its own document id: the model's `document_ids` make attention
block-diagonal and restart positions, so each conversation gets exactly the loss it gets alone (tested),
and a short conversation no longer wastes a whole row of padding. The rest of a row is padding: id 0,
target `IGNORE`, a document id of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IGNORE = -100  # cross_entropy's ignore_index: a target that counts for nothing


@dataclass
class Rows:
    """`n` rows of `length` positions: inputs, targets and document ids, each (n, length) int64."""

    inputs: np.ndarray
    targets: np.ndarray
    documents: np.ndarray

    def __len__(self) -> int:
        return len(self.inputs)

    def take(self, index: np.ndarray, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        """Rows `index` as tensors (inputs, targets, document ids), each (len(index), length)."""
        return tuple(
            torch.from_numpy(a[index]).to(device) for a in (self.inputs, self.targets, self.documents)
        )


def example(ids: list[int], mask: list[int]) -> tuple[list[int], list[int]]:
    """(inputs, targets) of one rendered conversation: next-token targets counted where `mask` is 1."""
    inputs = ids[:-1]
    targets = [t if m else IGNORE for t, m in zip(ids[1:], mask[1:])]
    return inputs, targets


def pack(examples: list[tuple[list[int], list[int]]], length: int, packing: bool = True) -> Rows:
    """Lay `examples` (each at most `length` long) into rows, in order; one per row when not `packing`."""
    rows: list[list[tuple[list[int], list[int]]]] = []
    used = length  # positions taken in the current row (a full row starts the next)
    for inputs, targets in examples:
        assert len(inputs) <= length, "examples are cut to the context before packing"
        if not packing or used + len(inputs) > length:
            rows.append([])
            used = 0
        rows[-1].append((inputs, targets))
        used += len(inputs)
    n = len(rows)
    out_inputs = np.zeros((n, length), dtype=np.int64)
    out_targets = np.full((n, length), IGNORE, dtype=np.int64)
    out_documents = np.zeros((n, length), dtype=np.int64)
    for r, row in enumerate(rows):
        at = 0
        for d, (inputs, targets) in enumerate(row):
            out_inputs[r, at : at + len(inputs)] = inputs
            out_targets[r, at : at + len(targets)] = targets
            out_documents[r, at : at + len(inputs)] = d
            at += len(inputs)
        out_documents[r, at:] = len(row)  # the padding is a document of its own: no one attends to it
    return Rows(out_inputs, out_targets, out_documents)

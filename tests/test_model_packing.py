"""Packed rows (`document_ids`): each document gets exactly the logits it gets alone."""

from __future__ import annotations

import pytest
import torch

from scratchlm.errors import ScratchError
from scratchlm.model import ModelConfig, Transformer


@pytest.mark.parametrize(
    "settings",
    [
        {"attn_impl": "sdpa", "ngram_orders": [2]},
        {"attn_impl": "reference", "n_kv_heads": 1},
        {"attn_impl": "sdpa", "pos_encoding": "learned"},
    ],
)
def test_each_packed_document_gets_the_logits_it_gets_alone(settings):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=40, context_length=32, n_layers=2, d_model=32, n_heads=4, **settings)
    model = Transformer(config).eval()
    lengths = [5, 9, 1, 7]
    documents = [torch.randint(0, 40, (n,)) for n in lengths]
    row = torch.cat([*documents, torch.zeros(4, dtype=torch.long)])[None]  # (1, 26): 4 pad tokens at the end
    ids = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)] + [torch.full((4,), -1)])[None]
    with torch.no_grad():
        packed = model(row, document_ids=ids)[0]  # (26, V)
        start = 0
        for doc in documents:
            alone = model(doc[None])[0]  # (n, V)
            torch.testing.assert_close(packed[start : start + len(doc)], alone, rtol=0, atol=1e-5)
            start += len(doc)
        # The twin this must differ from: the same row without document ids lets documents see each other.
        leaked = model(row)[0]
    assert not torch.allclose(leaked[5:14], packed[5:14], atol=1e-3)


def test_document_ids_refuse_a_cache():
    model = Transformer(ModelConfig(vocab_size=10, context_length=8, n_layers=1, d_model=16, n_heads=2))
    with pytest.raises(ScratchError, match="document_ids"):
        model(torch.zeros(1, 4, dtype=torch.long), cache=model.new_cache(1), document_ids=torch.zeros(1, 4))

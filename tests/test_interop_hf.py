"""Parity with Hugging Face: our Llama exported and loaded by `transformers` computes the same logits."""

from __future__ import annotations

import json

import pytest
import torch

from scratchlm.errors import ScratchError
from scratchlm.interop.hf import export_hf, from_hf_config, hf_name, import_hf, our_name, to_hf_config
from scratchlm.model import ModelConfig, Transformer

transformers = pytest.importorskip("transformers", reason="transformers is a test extra (pip install .[hf])")


def random_llama(n_kv_heads: int, tie: bool, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=101,
        context_length=64,
        n_layers=2,
        d_model=64,
        n_heads=4,
        n_kv_heads=n_kv_heads,
        rope_theta=5000.0,
        norm_eps=1e-6,
        tie_embeddings=tie,
        init_std=0.1,
    )
    model = Transformer(cfg).eval()
    with torch.no_grad():  # norm gains away from 1, so a misplaced norm weight would show
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("n_kv_heads,tie", [(4, True), (4, False), (2, True), (1, False)])
def test_transformers_loads_export_with_equal_logits(tmp_path, n_kv_heads, tie):
    model = random_llama(n_kv_heads, tie)
    export_hf(model, tmp_path / "hf")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    assert hf.config.num_key_value_heads == n_kv_heads and hf.config.tie_word_embeddings == tie
    ids = torch.randint(0, 101, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert (ours - theirs).abs().max().item() < 1e-4

    back, tokenizer = import_hf(tmp_path / "hf")
    assert tokenizer is None
    assert back.config == model.config
    assert not any(t.is_meta for t in [*back.parameters(), *back.buffers()])
    assert (back.lm_head.weight is back.token_embedding.weight) == tie
    for (name, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name
    with torch.no_grad():
        assert torch.equal(back(ids), ours)


def test_names_and_config_round_trip():
    model = random_llama(2, False)
    for name in model.state_dict():
        assert our_name(hf_name(name)) == name
    assert hf_name("layers.1.mlp_norm.weight") == "model.layers.1.post_attention_layernorm.weight"
    hf = json.loads(json.dumps(to_hf_config(model.config)))
    assert from_hf_config(hf) == model.config
    assert hf["head_dim"] == 16 and hf["architectures"] == ["LlamaForCausalLM"]


@pytest.mark.parametrize(
    "field,value", [("pos_encoding", "learned"), ("norm", "layernorm"), ("mlp", "gelu"), ("qk_norm", True)]
)
def test_non_llama_configs_are_refused_by_field(tmp_path, field, value):
    model = Transformer(ModelConfig(vocab_size=11, d_model=16, n_heads=2, n_layers=1, **{field: value}))
    with pytest.raises(ScratchError, match=field):
        export_hf(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_import_refuses_unsupported_llama_variants(tmp_path):
    cfg = to_hf_config(random_llama(2, True).config)
    with pytest.raises(ScratchError, match="rope_type"):
        from_hf_config({**cfg, "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}})
    with pytest.raises(ScratchError, match="attention_bias"):
        from_hf_config({**cfg, "attention_bias": True})
    with pytest.raises(ScratchError, match="hidden_size"):
        from_hf_config({k: v for k, v in cfg.items() if k != "hidden_size"})
    with pytest.raises(ScratchError, match="config.json"):
        import_hf(tmp_path)


@pytest.mark.parametrize("tie", [True, False])
def test_import_a_folder_written_by_transformers(tmp_path, tie):
    torch.manual_seed(3)
    config = transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rope_theta=20000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie,
    )
    hf = transformers.LlamaForCausalLM(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    model, _ = import_hf(tmp_path / "hf")
    assert (model.config.n_kv_heads, model.config.d_ff, model.config.rope_theta) == (2, 80, 20000.0)
    ids = torch.randint(0, 97, (2, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() < 1e-4

"""LoRA: merged = unmerged, only the adapters train, PEFT computes the same logits, dropout really applies.

Every check runs on a trained adapter: at initialisation B = 0 and the adapter changes nothing, so a
check made then could not fail. `trained` asserts the adapter moved the logits before any comparison.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.errors import ScratchError
from scratchlm.finetune import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    export_peft,
    lora_state_dict,
    merge_lora,
    trainable_parameters,
)
from scratchlm.interop.hf import export_hf
from scratchlm.model import ModelConfig, Transformer
from scratchlm.model.folder import load_model, save_model
from scratchlm.tokenizer import train_char

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
IDS = torch.randint(0, 37, (2, 24), generator=torch.Generator().manual_seed(7))


def tiny(seed: int = 0, **changes) -> Transformer:
    torch.manual_seed(seed)
    base = dict(
        vocab_size=37, context_length=32, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, init_std=0.1
    )
    model = Transformer(ModelConfig(**{**base, **changes})).eval()
    with torch.no_grad():  # norm gains away from 1, so a misplaced norm weight would show
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


def logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS)


def train(model: nn.Module, steps: int = 4, lr: float = 3e-2) -> None:
    """A few AdamW steps of next-token loss on random tokens, with every parameter handed to the optimizer
    (the frozen ones must stay put by having no gradient, not by being left out)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(steps):
        ids = torch.randint(0, model.config.vocab_size, (4, 17), generator=generator)
        out = model(ids[:, :-1])  # (B, T, V)
        loss = F.cross_entropy(out.flatten(0, 1), ids[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def trained(model: nn.Module, config: LoRAConfig, steps: int = 4) -> nn.Module:
    """`model` with LoRA applied and trained; asserts the adapter changed the logits noticeably."""
    before = logits(model)
    apply_lora(model, config)
    assert (logits(model) - before).abs().max() == 0  # B = 0: the adapter starts as the identity
    train(model, steps)
    assert (logits(model) - before).abs().max() > 1e-2, "the adapter did not train: the checks would be void"
    return model


# --- configuration and initialisation -------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, words",
    [
        (dict(rank=0), "rank must be a positive integer"),
        (dict(rank=2.0), "rank must be a positive integer"),
        (dict(alpha=0), "alpha must be a positive number"),
        (dict(dropout=1.0), "dropout must be in"),
        (dict(targets=[]), "targets is empty"),
        (dict(targets=["c_attn"]), "unknown target 'c_attn'"),
        (dict(targets=["q_proj", "q_proj"]), "repeats"),
    ],
)
def test_invalid_config_is_one_clear_line(changes, words):
    with pytest.raises(ScratchError, match=words) as info:
        LoRAConfig(**changes)
    assert "\n" not in str(info.value)


def test_init_is_peft_kaiming_uniform_and_zero_b():
    layer = LoRALinear(nn.Linear(64, 48, bias=False), rank=8, alpha=16)
    bound = 1 / math.sqrt(64)  # kaiming_uniform(a=sqrt(5)): sqrt(6 / ((1 + 5) * fan_in))
    assert layer.lora_A.shape == (8, 64) and layer.lora_B.shape == (48, 8)
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.abs().max() > 0.9 * bound
    assert torch.count_nonzero(layer.lora_B) == 0 and layer.scaling == 2.0


def test_missing_target_and_double_application_are_refused():
    gelu = tiny(mlp="gelu")
    with pytest.raises(ScratchError, match="no 'gate_proj' layer"):
        apply_lora(gelu, LoRAConfig(targets=["q_proj", "gate_proj"]))
    assert not any(isinstance(m, LoRALinear) for m in gelu.modules())  # refused before any change
    assert all(p.requires_grad for p in gelu.parameters())
    model = apply_lora(tiny(), LoRAConfig())
    with pytest.raises(ScratchError, match="already has LoRA adapters"):
        apply_lora(model, LoRAConfig())


# --- merging --------------------------------------------------------------------------------------------


def test_merged_and_unmerged_logits_agree(tmp_path):
    model = trained(tiny(), LoRAConfig(rank=4, alpha=8, targets=ALL))
    reference = logits(model)
    wrappers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert len(wrappers) == 2 * 7
    originals = [w.base.weight.clone() for w in wrappers]

    for w in wrappers:
        w.merge()
    assert (logits(model) - reference).abs().max() < 1e-5
    assert not all(torch.equal(w.base.weight, o) for w, o in zip(wrappers, originals))
    for w in wrappers:
        w.unmerge()
    assert (logits(model) - reference).abs().max() < 1e-5
    assert all(torch.allclose(w.base.weight, o, atol=1e-6) for w, o in zip(wrappers, originals))

    plain = merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in plain.modules())
    assert type(plain.layers[0].attention.q_proj) is nn.Linear
    assert all(p.requires_grad for p in plain.parameters())
    assert set(plain.state_dict()) == set(tiny().state_dict())
    assert (logits(plain) - reference).abs().max() < 1e-5

    tokenizer = train_char("".join(chr(c) for c in range(97, 97 + 30)))
    save_model(tmp_path / "merged", plain, tokenizer)
    loaded, _, _ = load_model(tmp_path / "merged", device="cpu")
    assert (logits(loaded) - reference).abs().max() < 1e-5


# --- only the adapter trains ----------------------------------------------------------------------------


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], ALL])
def test_only_the_adapter_trains(targets):
    model = tiny()
    cfg = model.config
    base_total = sum(p.numel() for p in model.parameters())
    rank = 4
    hd = cfg.head_dim
    shapes = {  # (in, out) of each projection, from the configuration alone
        "q_proj": (cfg.d_model, cfg.n_heads * hd),
        "k_proj": (cfg.d_model, cfg.n_kv_heads * hd),
        "v_proj": (cfg.d_model, cfg.n_kv_heads * hd),
        "o_proj": (cfg.n_heads * hd, cfg.d_model),
        "gate_proj": (cfg.d_model, cfg.d_ff),
        "up_proj": (cfg.d_model, cfg.d_ff),
        "down_proj": (cfg.d_ff, cfg.d_model),
    }
    expected = cfg.n_layers * sum(rank * (shapes[t][0] + shapes[t][1]) for t in targets)

    apply_lora(model, LoRAConfig(rank=rank, alpha=8, targets=targets))
    assert trainable_parameters(model) == (expected, base_total + expected)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    adapter = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.endswith(("lora_A", "lora_B")) for n in adapter)
    assert sum(p.numel() for p in adapter.values()) == expected

    train(model, steps=2)
    for name, before in frozen.items():
        assert torch.equal(model.get_parameter(name), before), name
    assert all(not torch.equal(model.get_parameter(n), p) for n, p in adapter.items())


def test_lora_state_dict_holds_the_adapter_alone_and_reloads():
    model = trained(tiny(), LoRAConfig(rank=4, targets=ALL))
    adapter = lora_state_dict(model)
    assert sum(t.numel() for t in adapter.values()) == trainable_parameters(model)[0]
    assert all(k.endswith(("lora_A", "lora_B")) for k in adapter)
    fresh = apply_lora(tiny(), LoRAConfig(rank=4, targets=ALL))
    result = fresh.load_state_dict(adapter, strict=False)
    assert not result.unexpected_keys
    assert torch.equal(logits(fresh), logits(model))


# --- dropout --------------------------------------------------------------------------------------------


def test_dropout_applies_in_training_and_merge_refuses_it_there():
    model = trained(tiny(), LoRAConfig(rank=4, dropout=0.5, targets=ALL))
    evaluated = logits(model)
    assert torch.equal(logits(model), evaluated)  # eval mode: no dropout, deterministic
    model.train()
    torch.manual_seed(0)
    first = logits(model)
    assert (first - evaluated).abs().max() > 1e-3  # the adapter's input really is dropped in training
    assert (logits(model) - first).abs().max() > 1e-3  # and with a fresh mask each call
    with pytest.raises(ScratchError, match="call model.eval"):
        model.layers[0].attention.q_proj.merge()
    model.eval()  # merging computes the eval-mode function: allowed there
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.merge()
    assert (logits(model) - evaluated).abs().max() < 1e-5


# --- PEFT export ----------------------------------------------------------------------------------------


def test_export_refuses_what_peft_cannot_load(tmp_path):
    with pytest.raises(ScratchError, match="no LoRA adapters"):
        export_peft(tiny(), LoRAConfig(), tmp_path / "a")
    model = apply_lora(tiny(), LoRAConfig(rank=4))
    with pytest.raises(ScratchError, match="does not match the LoRAConfig"):
        export_peft(model, LoRAConfig(rank=8), tmp_path / "a")
    with pytest.raises(ScratchError, match="mlp"):
        export_peft(apply_lora(tiny(mlp="gelu"), LoRAConfig()), LoRAConfig(), tmp_path / "a")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    "changes, config",
    [
        (dict(), LoRAConfig(rank=4, alpha=8)),  # the default targets q, v; tied embeddings
        (dict(n_kv_heads=1, tie_embeddings=False), LoRAConfig(rank=3, alpha=5, dropout=0.1, targets=ALL)),
    ],
)
def test_peft_loads_the_export_with_equal_logits(tmp_path, changes, config):
    transformers = pytest.importorskip("transformers", reason="transformers is a dev extra")
    peft = pytest.importorskip("peft", reason="peft is a dev extra (pip install -e .[dev])")
    model = tiny(**changes)
    export_hf(model, tmp_path / "base")  # the base, before the adapters wrap its layers
    trained(model, config)
    export_peft(model, config, tmp_path / "adapter", base_hf_dir=tmp_path / "base")

    written = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert written["base_model_name_or_path"] == str((tmp_path / "base").resolve())
    loaded_config = peft.LoraConfig.from_pretrained(tmp_path / "adapter")
    assert (loaded_config.r, loaded_config.lora_alpha, set(loaded_config.target_modules)) == (
        config.rank,
        config.alpha,
        set(config.targets),
    )

    base = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "base", local_files_only=True)
    theirs = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        assert (theirs(IDS).logits - logits(model)).abs().max() < 1e-4

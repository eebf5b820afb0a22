"""Hugging Face Llama interop: export a scratchlm model as a `LlamaForCausalLM` folder, and import one back.

A Llama-style scratchlm model (RoPE, RMSNorm, SwiGLU, no biases, no QK-norm) computes the same function as
Hugging Face's Llama, and our parameter layout was chosen to match theirs: linear weights are `[out, in]`,
the MLP is `gate_proj / up_proj / down_proj`, and RoPE rotates halves (dimension i paired with
i + head_dim/2, HF's `rotate_half`). Export is therefore a renaming of tensors (no q/k row permutation)
plus a `config.json` in `LlamaConfig`'s terms. The tests load the result with `transformers` offline and
compare logits.

`transformers` is not needed here: the folder is plain JSON and safetensors. The scratchlm tokenizer
folder is written beside the weights (`tokenizer/`), so `import_hf` can rebuild a complete model folder;
a BPE tokenizer is also written as Hugging Face's `tokenizer.json` (see `hf_tokenizer.py`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from scratchlm.errors import ScratchError
from scratchlm.fileio import atomic_dir, save_safetensors
from scratchlm.interop.hf_tokenizer import write_hf_tokenizer
from scratchlm.model.config import ModelConfig

# scratchlm parameter name -> Hugging Face name. `{i}` is the layer index.
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attention.q_proj.weight": "self_attn.q_proj.weight",
    "attention.k_proj.weight": "self_attn.k_proj.weight",
    "attention.v_proj.weight": "self_attn.v_proj.weight",
    "attention.o_proj.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.up_proj.weight": "mlp.up_proj.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embedding.weight": "model.embed_tokens.weight",
    "final_norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}

# What a Llama is, in ModelConfig terms: field -> the only value HF's Llama computes.
_LLAMA_REQUIRES = {
    "pos_encoding": "rope",
    "norm": "rmsnorm",
    "mlp": "swiglu",
    "bias": False,
    "qk_norm": False,
    "ngram_orders": [],
}


def hf_name(name: str) -> str:
    """Our parameter name -> Hugging Face's (`layers.3.attention.q_proj.weight` -> `model.layers.3...`)."""
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    prefix, index, rest = name.split(".", 2)
    if prefix != "layers" or rest not in _LAYER_NAMES:
        raise ScratchError(
            f"parameter {name!r} has no Hugging Face Llama counterpart; export a Llama-style model"
        )
    return f"model.layers.{index}.{_LAYER_NAMES[rest]}"


def our_name(hf: str) -> str:
    """Hugging Face's parameter name -> ours (the inverse of `hf_name`)."""
    for ours, theirs in _GLOBAL_NAMES.items():
        if hf == theirs:
            return ours
    head, rest = "model.layers.", None
    if hf.startswith(head):
        index, rest = hf[len(head) :].split(".", 1)
        for ours, theirs in _LAYER_NAMES.items():
            if rest == theirs:
                return f"layers.{index}.{ours}"
    raise ScratchError(f"tensor {hf!r} is not part of a Llama model scratchlm can import")


def check_llama_compatible(config: ModelConfig) -> None:
    """Refuse, naming the field, a configuration that HF's Llama cannot compute."""
    for field, wanted in _LLAMA_REQUIRES.items():
        value = getattr(config, field)
        if value != wanted:
            raise ScratchError(
                f"cannot export to Hugging Face Llama: model config {field}={value!r}, "
                f"Llama needs {wanted!r}; "
                "only rope/rmsnorm/swiglu models without bias, qk_norm or n-gram embeddings export"
            )


def to_hf_config(config: ModelConfig, eot_id: int | None = None) -> dict:
    """A `LlamaConfig` dict for our configuration (rope_theta both flat, as in transformers 4, and in
    `rope_parameters`, as transformers 5 writes it)."""
    check_llama_compatible(config)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.context_length,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": config.init_std,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "dtype": "float32",
    }


def from_hf_config(hf: dict) -> ModelConfig:
    """Our `ModelConfig` for a Llama `config.json`; anything Llama-like we do not compute is refused."""
    try:
        return _from_hf_config(hf)
    except KeyError as e:
        raise ScratchError(f"config.json lacks {e.args[0]!r}, which a Llama configuration needs") from None


def _from_hf_config(hf: dict) -> ModelConfig:
    if hf.get("model_type") != "llama":
        raise ScratchError(f"config.json has model_type {hf.get('model_type')!r}; only 'llama' imports")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    checks = {
        "hidden_act": (hf.get("hidden_act", "silu"), "silu"),
        "attention_bias": (hf.get("attention_bias", False), False),
        "mlp_bias": (hf.get("mlp_bias", False), False),
        "rope_type": (rope.get("rope_type", rope.get("type", "default")), "default"),
        "pretraining_tp": (hf.get("pretraining_tp", 1), 1),
    }
    for field, (value, wanted) in checks.items():
        if value != wanted:
            raise ScratchError(f"config.json {field}={value!r} is not supported (scratchlm needs {wanted!r})")
    n_heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // n_heads
    if head_dim * n_heads != hf["hidden_size"]:
        raise ScratchError(
            f"config.json head_dim={head_dim} x {n_heads} heads != hidden_size {hf['hidden_size']}; "
            "scratchlm needs head_dim = hidden_size / num_attention_heads"
        )
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        context_length=hf.get("max_position_embeddings", 2048),
        n_layers=hf["num_hidden_layers"],
        d_model=hf["hidden_size"],
        n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        d_ff=hf["intermediate_size"],
        pos_encoding="rope",
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        norm="rmsnorm",
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        mlp="swiglu",
        qk_norm=False,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        bias=False,
        init_std=float(hf.get("initializer_range", 0.02)),
    )


def hf_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our weights under HF's names, float32 and contiguous; a tied head is stored once (as HF does)."""
    tied = model.config.tie_embeddings
    out = {}
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        out[hf_name(name)] = tensor.detach().to("cpu", torch.float32).contiguous()
    return out


def export_hf(model: torch.nn.Module, out_dir: str | Path, tokenizer=None) -> Path:
    """Write `out_dir` as a Hugging Face Llama folder: config.json, model.safetensors, our tokenizer/ folder,
    and for a BPE tokenizer HF's tokenizer.json + tokenizer_config.json (so `AutoTokenizer` reads it)."""
    config = model.config
    check_llama_compatible(config)
    eot = getattr(tokenizer, "eot_id", None) if tokenizer is not None else None
    tensors = hf_state_dict(model)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        (tmp / "config.json").write_text(json.dumps(to_hf_config(config, eot), indent=2) + "\n")
        (tmp / "generation_config.json").write_text(
            json.dumps({"bos_token_id": eot, "eos_token_id": eot, "do_sample": False}, indent=2) + "\n"
        )
        save_safetensors(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save(tmp / "tokenizer")
            if getattr(tokenizer, "kind", None) == "bpe":  # a character vocabulary has no HF equivalent
                write_hf_tokenizer(tokenizer, tmp, config.context_length)
    return out_dir


def _read_hf_tensors(src: Path) -> dict[str, torch.Tensor]:
    single = src / "model.safetensors"
    if single.is_file():
        return load_file(str(single))
    index = src / "model.safetensors.index.json"
    if index.is_file():  # sharded checkpoints list each tensor's file
        weight_map = json.loads(index.read_text())["weight_map"]
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            tensors.update(load_file(str(src / shard)))
        return tensors
    raise ScratchError(f"{src} has no model.safetensors (or index); export the HF model with safetensors")


def import_hf(src_dir: str | Path, device: str | torch.device = "cpu"):
    """Build our `Transformer` from a Hugging Face Llama folder; returns `(model, tokenizer or None)`."""
    from scratchlm.model.transformer import Transformer

    src = Path(src_dir)
    config_path = src / "config.json"
    if not config_path.is_file():
        raise ScratchError(f"{src} has no config.json; point --src at a Hugging Face model folder")
    try:
        hf_config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise ScratchError(f"{config_path} is not valid JSON ({e})") from None
    config = from_hf_config(hf_config)
    tensors = {
        our_name(k): v for k, v in _read_hf_tensors(src).items() if not k.endswith("rotary_emb.inv_freq")
    }
    if config.tie_embeddings:
        tensors.setdefault("lm_head.weight", tensors.get("token_embedding.weight"))
    with torch.device("meta"):
        model = Transformer(config)  # no memory and no random init for weights about to be replaced
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ScratchError(f"{src}: weights missing for {missing[0]} (and {len(missing) - 1} more)")
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ScratchError(
                f"{src}: tensor {hf_name(name)} has shape {tuple(tensor.shape)}, "
                f"config.json implies {tuple(expected[name].shape)}"
            )
    model.load_state_dict({k: v.float() for k, v in tensors.items()}, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.token_embedding.weight  # assign=True replaced the shared Parameter
    tokenizer = None
    if (src / "tokenizer").is_dir():
        from scratchlm.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(src / "tokenizer")
    return model.to(device).eval(), tokenizer

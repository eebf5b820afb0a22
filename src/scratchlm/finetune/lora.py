"""LoRA: low-rank adaptation of a frozen model (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large
Language Models").

A target linear layer W (out x in) is frozen and learns only a low-rank update:

    y = W x + (alpha / r) * B A dropout(x)        A: (r, in), B: (out, r), r << min(in, out)

The model file knows nothing of this: `apply_lora` swaps the target `nn.Linear`s for `LoRALinear`
wrappers from outside and freezes everything else; `merge_lora` folds B A into W and puts plain
`nn.Linear`s back, so the result is an ordinary `Transformer` for `save_model`. `export_peft` writes the
adapter in PEFT's format for a Hugging Face `LlamaForCausalLM` (the base exported by `export_hf`).

    model = apply_lora(model, LoRAConfig(rank=8))     # only the adapters train now
    ...train...
    export_peft(model, config, "adapter", base_hf_dir="out-hf")
    save_model("merged", merge_lora(model), tokenizer)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from scratchlm.errors import ScratchError
from scratchlm.fileio import atomic_dir, save_safetensors
from scratchlm.interop.hf import check_llama_compatible, hf_name

# The transformer's linear projections, by the names `model/attention.py` and `model/layers.py` give them
# (the same as Hugging Face Llama's, so PEFT's `target_modules` are these names too).
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")  # gate_proj: SwiGLU only
PROJECTIONS = ATTENTION_PROJECTIONS + MLP_PROJECTIONS


@dataclass
class LoRAConfig:
    """Which projections get an adapter, and its rank r, scale alpha / r and input dropout.

    Default targets q and v: under a fixed budget of adapter parameters Hu et al. 2021 (sec. 7.1, Table 5)
    find W_q, W_v at r=4 about as good as all four attention matrices at r=2 and better than any single one
    at r=8, and adapt W_q, W_v in their GPT-3 runs; PEFT's default for Llama is the same pair.
    """

    rank: int = 8
    alpha: float = 16
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank <= 0:
            raise ScratchError(f"lora config: rank must be a positive integer, got {self.rank!r}")
        if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool) or self.alpha <= 0:
            raise ScratchError(f"lora config: alpha must be a positive number, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ScratchError(f"lora config: dropout must be in [0, 1), got {self.dropout!r}")
        self.targets = list(self.targets)
        if not self.targets:
            raise ScratchError(f"lora config: targets is empty; name some of {', '.join(PROJECTIONS)}")
        unknown = [t for t in self.targets if t not in PROJECTIONS]
        if unknown:
            raise ScratchError(
                f"lora config: unknown target {unknown[0]!r}; targets are among {', '.join(PROJECTIONS)}"
            )
        if len(set(self.targets)) != len(self.targets):
            raise ScratchError(f"lora config: targets repeats a name: {self.targets!r}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable low-rank update: base(x) + dropout(x) A^T B^T * alpha / r.

    Scaling by alpha / r (Hu et al. 2021, sec. 4.1) keeps the update's scale from growing with r, so
    hyperparameters need less retuning when r changes. Initialisation is PEFT's: A Kaiming-uniform (a=sqrt(5),
    nn.Linear's own init), B zero, so the wrapped layer starts as exactly the base layer.

    `merge()` adds the update into the base weight (one matmul at inference, no extra latency: sec. 4.1),
    `unmerge()` subtracts it again. Merging computes the eval-mode function (dropout is the identity then),
    so it is refused in training mode with dropout > 0, where the two would differ.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        weight = base.weight  # (out, in)
        self.lora_A = nn.Parameter(
            torch.empty(rank, base.in_features, device=weight.device, dtype=weight.dtype)
        )
        self.lora_B = nn.Parameter(
            torch.zeros(base.out_features, rank, device=weight.device, dtype=weight.dtype)
        )
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        y = self.base(x)
        if self.merged:
            return y
        return y + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling  # (..., r) -> (..., out)

    def delta_weight(self) -> torch.Tensor:
        """The update to the base weight, (alpha / r) B A: (out, in)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        if self.training and isinstance(self.dropout, nn.Dropout):
            raise ScratchError(
                "cannot merge a LoRA layer with dropout in training mode (the merged layer has no dropout); "
                "call model.eval() first"
            )
        self.base.weight += self.delta_weight()
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        self.base.weight -= self.delta_weight()
        self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, merged={self.merged}"


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """Every LoRA wrapper in `model`, by module name (`layers.0.attention.q_proj`)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def apply_lora(model: nn.Module, config: LoRAConfig) -> nn.Module:
    """Wrap each target projection of `model` in a `LoRALinear`, in place, and freeze everything else.

    Afterwards only the adapters' A and B require gradients. Returns `model`.
    """
    if lora_modules(model):
        raise ScratchError(
            "model already has LoRA adapters; merge_lora(model) first, or apply to a fresh one"
        )
    targets = [
        name
        for name, module in model.named_modules()
        if name.rpartition(".")[2] in config.targets and isinstance(module, nn.Linear)
    ]
    found = {name.rpartition(".")[2] for name in targets}
    missing = [t for t in config.targets if t not in found]
    if missing:  # checked before anything changes: a refused model is left as it was
        raise ScratchError(
            f"lora: the model has no {missing[0]!r} layer (gate_proj exists only with mlp=swiglu); "
            "remove it from targets"
        )
    model.requires_grad_(False)
    for name in targets:
        parent_name, _, leaf = name.rpartition(".")
        wrapper = LoRALinear(model.get_submodule(name), config.rank, config.alpha, config.dropout)
        setattr(model.get_submodule(parent_name), leaf, wrapper)
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights only, under our names (`layers.0.attention.q_proj.lora_A`); load them back into
    a model after `apply_lora` with `model.load_state_dict(sd, strict=False)`."""
    return {k: v for k, v in model.state_dict().items() if k.endswith((".lora_A", ".lora_B"))}


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the plain `nn.Linear` back, in place.

    Returns `model` as an ordinary model (every parameter trainable again, as when built), which
    `scratchlm.model.folder.save_model` saves. Deep-copy it first to keep the adapters.
    """
    for name, wrapper in lora_modules(model).items():
        if not wrapper.merged:
            wrapper.base.weight += wrapper.delta_weight()
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name), leaf, wrapper.base)
    return model.requires_grad_(True)


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(parameters that require gradients, all parameters), each shared tensor counted once."""
    params = list(model.parameters())  # parameters() yields a tied tensor once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# --- PEFT export ---------------------------------------------------------------------------------------

# PEFT wraps the HF model twice (PeftModelForCausalLM -> LoraModel -> LlamaForCausalLM): hence the prefix.
PEFT_PREFIX = "base_model.model."


def peft_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters under PEFT's names for HF Llama, float32: `layers.0.attention.q_proj.lora_A` ->
    `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` (PEFT's A and B are nn.Linear)."""
    out = {}
    for name, wrapper in lora_modules(model).items():
        module = hf_name(f"{name}.weight").removesuffix(".weight")  # model.layers.0.self_attn.q_proj
        for part, tensor in (("lora_A", wrapper.lora_A), ("lora_B", wrapper.lora_B)):
            out[f"{PEFT_PREFIX}{module}.{part}.weight"] = (
                tensor.detach().to("cpu", torch.float32).contiguous()
            )
    return out


def peft_adapter_config(config: LoRAConfig, base_model_name_or_path: str | None = None) -> dict:
    """`adapter_config.json` in `peft.LoraConfig`'s fields (PEFT fills the ones left out with defaults)."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": list(config.targets),
        "bias": "none",
        "fan_in_fan_out": False,  # our weights are [out, in], as nn.Linear's
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,  # scaling alpha / r, not alpha / sqrt(r)
        "use_dora": False,
        "modules_to_save": None,
        "layers_to_transform": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def export_peft(
    model: nn.Module, config: LoRAConfig, out_dir: str | Path, base_hf_dir: str | Path | None = None
) -> Path:
    """Write the adapters of `model` as a PEFT LoRA folder: adapter_config.json, adapter_model.safetensors.

    `peft.PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base), out_dir)` computes what our
    model does, where `base` is our base model written by `export_hf` (before `apply_lora`).
    `base_hf_dir` is recorded as `base_model_name_or_path`: an existing folder as its absolute path, anything
    else (a Hub id) as given.
    """
    check_llama_compatible(model.config)
    wrappers = lora_modules(model)
    if not wrappers:
        raise ScratchError("export_peft: the model has no LoRA adapters; apply_lora(model, config) first")
    for name, w in wrappers.items():
        if (
            w.rank != config.rank
            or w.scaling != config.scaling
            or name.rpartition(".")[2] not in config.targets
        ):
            raise ScratchError(
                f"export_peft: adapter {name} (rank {w.rank}, alpha {w.alpha}) does not match the LoRAConfig "
                f"given (rank {config.rank}, alpha {config.alpha}, targets {config.targets}); pass the one "
                "apply_lora used"
            )
    base = None
    if base_hf_dir is not None:
        base = str(Path(base_hf_dir).resolve()) if Path(base_hf_dir).is_dir() else str(base_hf_dir)
    tensors = peft_state_dict(model)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        (tmp / "adapter_config.json").write_text(
            json.dumps(peft_adapter_config(config, base), indent=2) + "\n"
        )
        save_safetensors(tensors, tmp / "adapter_model.safetensors", metadata={"format": "pt"})
    return out_dir

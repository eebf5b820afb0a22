"""Fine-tuning a trained model: supervised fine-tuning on conversations, LoRA adapters (Hu et al. 2021).

from scratchlm.finetune import load_sft_config, sft
result = sft(load_sft_config("sft-tasks-char", ["base=runs/base"]), "runs/sft")

from scratchlm.finetune import LoRAConfig, apply_lora, export_peft, merge_lora
model = apply_lora(model, LoRAConfig(rank=8, alpha=16))   # only the adapters require gradients
export_peft(model, LoRAConfig(rank=8, alpha=16), "adapter", base_hf_dir="out-hf")
plain = merge_lora(model)                                 # an ordinary Transformer for save_model
"""

from __future__ import annotations

from scratchlm.lazy import lazy_exports

_EXPORTS = {
    "SFTConfig": "scratchlm.finetune.config",
    "load_sft_config": "scratchlm.finetune.config",
    "sft": "scratchlm.finetune.sft_objective",
    "LoRAConfig": "scratchlm.finetune.lora",
    "LoRALinear": "scratchlm.finetune.lora",
    "apply_lora": "scratchlm.finetune.lora",
    "export_peft": "scratchlm.finetune.lora",
    "lora_state_dict": "scratchlm.finetune.lora",
    "merge_lora": "scratchlm.finetune.lora",
    "trainable_parameters": "scratchlm.finetune.lora",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)

"""Fine-tuning a trained model: LoRA adapters (Hu et al. 2021), applied from outside the model.

from scratchlm.finetune import LoRAConfig, apply_lora, export_peft, merge_lora
model = apply_lora(model, LoRAConfig(rank=8, alpha=16))   # only the adapters require gradients
export_peft(model, LoRAConfig(rank=8, alpha=16), "adapter", base_hf_dir="out-hf")
plain = merge_lora(model)                                 # an ordinary Transformer for save_model
"""

from scratchlm.finetune.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    export_peft,
    lora_state_dict,
    merge_lora,
    trainable_parameters,
)

__all__ = [
    "LoRAConfig",
    "LoRALinear",
    "apply_lora",
    "export_peft",
    "lora_state_dict",
    "merge_lora",
    "trainable_parameters",
]

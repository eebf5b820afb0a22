"""Interop with other ecosystems: Hugging Face Llama export and import.

from scratchlm.interop.hf import export_hf, import_hf
export_hf(model, "out-hf", tokenizer)      # LlamaForCausalLM.from_pretrained("out-hf") reads it
model, tokenizer = import_hf("out-hf")
"""

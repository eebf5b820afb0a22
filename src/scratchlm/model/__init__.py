"""The decoder-only transformer: configuration, layers, attention, KV cache, presets, model folders.

from scratchlm.model import ModelConfig, Transformer, get_preset
model = Transformer(get_preset("llama-10m"))
logits = model(input_ids)                          # (B, T) -> (B, T, V)
cache = model.new_cache(batch_size=1)
logits = model(prompt_ids, cache=cache)            # prefill
logits = model(next_id[:, None], cache=cache)      # one decoding step
"""

from scratchlm.model.config import ModelConfig
from scratchlm.model.device import autocast_context, pick_device, resolve_dtype
from scratchlm.model.folder import load_model, save_model
from scratchlm.model.kv_cache import KVCache
from scratchlm.model.presets import PRESETS, get_preset
from scratchlm.model.transformer import Transformer

__all__ = [
    "PRESETS",
    "KVCache",
    "ModelConfig",
    "Transformer",
    "autocast_context",
    "get_preset",
    "load_model",
    "pick_device",
    "resolve_dtype",
    "save_model",
]

"""Generation: sampling processors and the decoding engine (prefill, then one token at a time).

    from scratchlm.generate import SamplingConfig, generate, generate_stream
    texts = generate(model, tokenizer, ["Once upon a time"], SamplingConfig(max_new_tokens=100, top_k=50))
    for step in generate_stream(model, tokenizer, ["Once"], SamplingConfig(max_new_tokens=20)):
        print(step.texts[0], end="", flush=True)

Imports are lazy (PEP 562): `scratchlm.generate.config` is importable without torch (the CLI's flags).
"""

from __future__ import annotations

from scratchlm.lazy import lazy_exports

_EXPORTS = {
    "ChatSession": "scratchlm.generate.chat",
    "DecodeStep": "scratchlm.generate.engine",
    "decode_steps": "scratchlm.generate.engine",
    "generate": "scratchlm.generate.engine",
    "generate_ids": "scratchlm.generate.engine",
    "generate_stream": "scratchlm.generate.engine",
    "SamplingConfig": "scratchlm.generate.config",
    "sample_next": "scratchlm.generate.sampling",
    "sample_next_logprobs": "scratchlm.generate.sampling",
    "TextStream": "scratchlm.generate.stream",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)

"""Generation: sampling processors and the decoding engine (prefill, then one token at a time).

from scratchlm.generate import SamplingConfig, generate
texts = generate(model, tokenizer, ["Once upon a time"], SamplingConfig(max_new_tokens=100, top_k=50))
"""

from scratchlm.generate.engine import generate, generate_ids
from scratchlm.generate.sampling import SamplingConfig, sample_next
from scratchlm.generate.stream import TextStream

__all__ = ["SamplingConfig", "TextStream", "generate", "generate_ids", "sample_next"]

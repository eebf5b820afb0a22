"""scratchlm: a large language model built from scratch, every stage real, readable and tested."""

__version__ = "0.1.0"

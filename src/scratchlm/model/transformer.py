"""The decoder-only transformer: embeddings, pre-norm residual blocks, a final norm and the LM head.

    x = embed(tokens) (+ position embedding, for learned / sinusoidal)
    for each block:  x = x + attention(norm(x));  x = x + mlp(norm(x))
    logits = lm_head(norm(x))

Pre-norm (Xiong et al. 2020) keeps the residual stream an identity path, which trains stably without a
learning-rate warmup as long as post-norm needs. The model computes logits only: no loss, no optimizer,
no device policy, no parallelism (those belong to `train/`).

Parameter names, for interop: `token_embedding`, `position_embedding` (learned only),
`layers.{i}.attn_norm`, `layers.{i}.attention.{q,k,v,o}_proj`, `layers.{i}.attention.{q,k}_norm`
(QK-norm only), `layers.{i}.mlp_norm`, `layers.{i}.mlp.{gate,up,down}_proj` (gate: SwiGLU only),
`final_norm`, `lm_head` (the same tensor as `token_embedding.weight` when tied), and
`ngram_embedding.tables.{i}` (hashed n-gram embeddings, only with `ngram_orders`). Linear weights are
`[out, in]`, as in Hugging Face.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from scratchlm.errors import ScratchError
from scratchlm.model.attention import Attention
from scratchlm.model.config import ModelConfig
from scratchlm.model.kv_cache import KVCache
from scratchlm.model.layers import make_mlp, make_norm, rope_cos_sin, sinusoidal_embedding
from scratchlm.model.ngram import NgramEmbedding


def _embedding(n: int, dim: int) -> nn.Embedding:
    """An embedding left uninitialized (reset_parameters fills it): nn.Embedding's own normal_ init on the
    meta device imports torch._dynamo, seconds of start-up for every model loaded from a folder."""
    return nn.Embedding(n, dim, _weight=torch.empty(n, dim))


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        self.attn_norm = make_norm(config)
        self.attention = Attention(config, layer_index)
        self.mlp_norm = make_norm(config)
        self.mlp = make_mlp(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, rope, attn_mask, is_causal, cache=None):  # (B, T, d) -> (B, T, d)
        x = x + self.dropout(self.attention(self.attn_norm(x), rope, attn_mask, is_causal, cache))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.token_embedding = _embedding(config.vocab_size, config.d_model)
        if config.pos_encoding == "learned":
            self.position_embedding = _embedding(config.context_length, config.d_model)
        if config.ngram_orders:
            self.ngram_embedding = NgramEmbedding(
                config.vocab_size, config.d_model, config.ngram_orders, config.ngram_buckets
            )
        self.embed_dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.final_norm = make_norm(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if self.lm_head.weight.device.type != "meta":  # meta: shapes only (counting, or weights to load)
            self.reset_parameters()
        if config.tie_embeddings:
            # Press & Wolf 2017: the input embedding and the output projection share one matrix.
            self.lm_head.weight = self.token_embedding.weight

    def reset_parameters(self) -> None:
        """GPT-2 initialization (Radford et al. 2019, sec. 2.3), as nanoGPT writes it.

        Every linear and embedding weight ~ N(0, init_std), biases 0, norm gains 1. The two projections
        that write into the residual stream (attention `o_proj` and MLP `down_proj`) get
        init_std / sqrt(2 * n_layers): the stream sums 2 * n_layers such outputs, so this keeps its
        variance at initialization independent of depth.
        """
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                is_residual = name.endswith(("o_proj", "down_proj"))
                nn.init.normal_(module.weight, mean=0.0, std=residual_std if is_residual else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)

    def set_attn_impl(self, impl: str) -> None:
        """Switch every layer between "sdpa" and "reference" attention (same weights, same results)."""
        assert impl in ("sdpa", "reference"), impl
        for block in self.layers:
            block.attention.attn_impl = impl

    # --- the KV cache -------------------------------------------------------------------------------

    def new_cache(
        self,
        batch_size: int,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """An empty cache for `batch_size` rows, `max_len` slots (default: the context length).

        Device and dtype default to the model's parameters. With learned positions, max_len cannot go past
        the context (there is no embedding for later positions).
        """
        cfg = self.config
        max_len = max_len or cfg.context_length
        if cfg.pos_encoding == "learned" and max_len > cfg.context_length:
            raise ScratchError(
                f"KV cache of {max_len} slots exceeds context_length {cfg.context_length} of a model with "
                "learned positions; use max_len <= context_length"
            )
        weight = self.token_embedding.weight
        return KVCache(
            cfg.n_layers,
            batch_size,
            cfg.n_kv_heads,
            cfg.head_dim,
            max_len,
            device=device or weight.device,
            dtype=dtype or weight.dtype,
        )

    # --- forward ------------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids (B, T) -> logits (B, T, vocab_size): the head over `hidden_states` (same arguments)."""
        hidden = self.hidden_states(
            input_ids,
            cache=cache,
            positions=positions,
            attention_mask=attention_mask,
            document_ids=document_ids,
        )
        return self.lm_head(hidden)  # (B, T, V)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        *,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids (B, T) -> the final-normed hidden states (B, T, d_model) the LM head reads.

        A reward or value model puts its own scalar head here instead (scratchlm.align.reward).

        With `cache`, the tokens come after what the cache holds and their keys/values are appended.
        `positions` (B, T): each token's position (default: consecutive, continuing each row's last
        position in the cache, or from 0). `attention_mask` (B, S) bool, True on real tokens, over all
        S = cached + T slots (or over the T new ones only, with a cache that remembers the rest).
        A left-padded row with positions counting from its first real token gives the same logits on its
        real tokens as the prompt alone.
        `document_ids` (B, T): several sequences packed in one row (no cache). A token attends only to
        earlier tokens of its own document, and positions restart at each document, so every document
        gets exactly the logits it would get alone (block-diagonal causal attention).
        """
        cfg = self.config
        B, T = input_ids.shape
        device = input_ids.device
        past = cache.length if cache is not None else 0
        if cache is None and T > cfg.context_length:
            raise ScratchError(
                f"input of {T} tokens exceeds the model's context_length {cfg.context_length}; "
                "truncate it (generation truncates from the left)"
            )
        if cache is not None:
            assert cache.batch_size == B, f"cache holds {cache.batch_size} rows, input has {B}"
            cache.reserve(T)

        if document_ids is not None:
            if cache is not None or attention_mask is not None:
                raise ScratchError("document_ids (packed rows) go without a cache and an attention_mask")
            attn_mask, is_causal = _document_mask(document_ids), False  # (B, 1, T, T)
            if positions is None:
                positions = _document_positions(document_ids)  # (B, T)
        if positions is None:
            start = cache.next_position[:, None] if cache is not None else 0
            positions = start + torch.arange(T, device=device)[None, :]  # (B, T) or (1, T)
        positions = positions.expand(B, T)
        key_mask = self._key_mask(attention_mask, cache, B, T, device)  # (B, S) bool or None
        if document_ids is None:
            attn_mask, is_causal = self._attention_mask(key_mask, past, T, device)

        x = self.embed(input_ids, positions, cache)  # (B, T, d)
        rope = None
        if cfg.pos_encoding == "rope":
            rope = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta, x.dtype)  # 2 x (B, 1, T, hd)
        x = self.embed_dropout(x)
        for block in self.layers:
            x = block(x, rope, attn_mask, is_causal, cache)
        if cache is not None:
            new_mask = key_mask[:, past:] if key_mask is not None else True
            ids = input_ids if cfg.ngram_orders else None  # only n-gram embeddings read them back
            cache.advance(T, positions, new_mask, ids)
        return self.final_norm(x)  # (B, T, d)

    def embed(
        self, input_ids: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None
    ) -> torch.Tensor:
        """(B, T) ids at (B, T) positions -> (B, T, d_model): the token embedding, plus the n-gram and the
        learned or sinusoidal position embeddings where the model has them (RoPE acts in attention).

        `cache`: what came before the ids, for the n-gram embedding's look-back.
        """
        cfg = self.config
        x = self.token_embedding(input_ids)  # (B, T, d)
        if cfg.ngram_orders:
            x = x + self.ngram_embedding(input_ids, positions, self._earlier_tokens(cache))
        if cfg.pos_encoding == "learned":
            x = x + self.position_embedding(positions)
        elif cfg.pos_encoding == "sinusoidal":
            x = x + sinusoidal_embedding(positions, cfg.d_model).to(x.dtype)
        return x

    def _earlier_tokens(self, cache: KVCache | None) -> torch.Tensor | None:
        """The last tokens a KV cache holds, as many as the n-gram embedding looks back (or None)."""
        if cache is None or cache.length == 0:
            return None
        return cache.tokens[:, max(0, cache.length - self.ngram_embedding.history) : cache.length]

    @staticmethod
    def _key_mask(attention_mask, cache, B, T, device) -> torch.Tensor | None:
        """The (B, S) real-token mask over every key slot, or None when there is no padding at all."""
        past = cache.length if cache is not None else 0
        if attention_mask is not None:
            attention_mask = attention_mask.to(device=device, dtype=torch.bool)
            width = attention_mask.shape[-1]
            if width == past + T:
                return attention_mask
            if cache is not None and width == T:
                return torch.cat([cache.mask[:, :past], attention_mask], dim=1)
            raise ScratchError(
                f"attention_mask covers {width} positions, expected {past + T} (cached + new) or {T} (new)"
            )
        if cache is not None and cache.padded:
            return torch.cat([cache.mask[:, :past], torch.ones(B, T, dtype=torch.bool, device=device)], 1)
        return None

    @staticmethod
    def _attention_mask(key_mask, past, T, device) -> tuple[torch.Tensor | None, bool]:
        """(attn_mask (B, 1, T, S) bool or None, is_causal) for the attention of T queries after `past`.

        Without padding and cache, SDPA's own causal flag is fastest. Otherwise query i (slot past + i)
        may see slot j when j <= past + i and slot j holds a real token. A pad query would then see
        nothing, and a softmax over nothing is NaN, so each query always sees itself: a pad token's
        output is garbage nobody reads, but finite, and no real token ever attends to a pad.
        """
        if key_mask is None and past == 0:
            return None, True
        if key_mask is None and T == 1:
            return None, False  # one new token sees everything before it
        S = past + T
        query_slots = torch.arange(past, S, device=device)[:, None]  # (T, 1)
        key_slots = torch.arange(S, device=device)[None, :]  # (1, S)
        allowed = (key_slots <= query_slots)[None]  # (1, T, S)
        if key_mask is not None:
            allowed = (allowed & key_mask[:, None, :]) | (key_slots == query_slots)[None]  # (B, T, S)
        return allowed[:, None], False  # (B or 1, 1, T, S)

    # --- size and cost ------------------------------------------------------------------------------

    def num_params(self, include_embeddings: bool = True) -> int:
        """Parameters, each shared tensor counted once.

        Without embeddings: minus the token and position embedding tables (the usual "non-embedding"
        count of Kaplan et al. 2020). An untied `lm_head` stays in: it is a real matmul, not a lookup.
        """
        n = sum(p.numel() for p in self.parameters())  # parameters() already skips the tied duplicate
        if not include_embeddings:
            n -= self.token_embedding.weight.numel()
            if self.config.ngram_orders:
                n -= sum(p.numel() for p in self.ngram_embedding.parameters())
            if self.config.pos_encoding == "learned":
                n -= self.position_embedding.weight.numel()
        return n

    def flops_per_token(self, training: bool = True, context_length: int | None = None) -> float:
        """Model FLOPs per token: 6N + 12 * n_layers * d_model * T for a training step (fwd + bwd).

        The estimate of Kaplan et al. 2020 / PaLM (Chowdhery et al. 2022, app. B): N counts the weights
        every token multiplies by: all parameters but the embedding lookups, the output head included
        (tied or not, it is a full d x V matmul). The attention term counts q k^T and attn v over a
        context of T = `context_length` (default the model's). A forward pass alone is a third of this.
        """
        cfg = self.config
        T = context_length or cfg.context_length
        n_matmul = self.num_params(include_embeddings=False)
        if cfg.tie_embeddings:
            n_matmul += self.lm_head.weight.numel()
        train = 6 * n_matmul + 12 * cfg.n_layers * cfg.d_model * T
        return float(train if training else train / 3)


def _document_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) bool: query i sees key j when j <= i and both belong to the same document."""
    T = document_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=document_ids.device).tril()  # (T, T)
    same = document_ids[:, :, None] == document_ids[:, None, :]  # (B, T, T)
    return (same & causal)[:, None]


def _document_positions(document_ids: torch.Tensor) -> torch.Tensor:
    """(B, T): each token's position within its document (0 where a new document starts)."""
    B, T = document_ids.shape
    index = torch.arange(T, device=document_ids.device).expand(B, T)  # (B, T)
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    first = (
        torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    )  # start of each token's document
    return index - first

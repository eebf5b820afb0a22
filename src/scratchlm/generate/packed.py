"""One decoding step, one new token per row, with the weights repacked for it: the fast twin of the forward.

At batch 1 a step is a matrix-vector product with every weight matrix (44 MB of float32 for llama-10m,
more than this CPU's 32 MB L3), and the shape of those products sets the speed. Measured on 2026-12-01
(docs/experiments.md, "Faster decoding at batch 1"), the products of one llama-10m step took:
- 4.7-5.0 ms as the model's 43 `F.linear` calls on [out, in] weights;
- 4.4-5.1 ms fused into 25 (q/k/v as one matrix, gate/up as one), with bitwise the same outputs;
- 3.0-3.4 ms fused and stored [in, out] (`x @ w`): MKL's gemv then streams rows of the weight into the
  outputs instead of taking a dot product per output. The sums run in another order (differences of
  ~1e-6), so logits are close to the model's, not bitwise equal.
Around them the step does only what one token needs, in fewer ops (at this size each op's dispatch, a few
microseconds, adds up to a fifth of the step): x kept as (B, d); RMSNorm as one `F.rms_norm` call;
RoPE's cos/sin read from a table and applied to q and k together, with `roll` for `rotate_half`; no
attention mask unless a row is padded. Each of these gives bitwise what the model's own op gives.

The packed copies are taken when the decoder is built (one more copy of the weights) and do not follow
later changes to the parameters: build a new decoder after a weight update (`decode_steps` builds one per
call). The model's parameters are untouched, so export still writes q/k/v separately. Prefill stays with
the model's own forward, which is also the slow twin the tests hold this against at every step.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.model.attention import reference_attention, sdpa_attention
from scratchlm.model.layers import RMSNorm, SwiGLU, rope_cos_sin

Projection = tuple[torch.Tensor, torch.Tensor | None]  # (weight, bias): [in, out] or [out, in]


@dataclass
class _Block:
    attn_norm: nn.Module
    qkv: Projection
    q_norm: nn.Module | None
    k_norm: nn.Module | None
    attend: object  # sdpa_attention or reference_attention, as the layer's attn_impl says
    o: Projection
    mlp_norm: nn.Module
    up: Projection  # SwiGLU: gate and up side by side
    activation: object | None  # PlainMLP's; None for SwiGLU
    down: Projection


def can_pack(model: nn.Module) -> bool:
    """True for a `Transformer` whose projections are plain `nn.Linear` (not LoRA-wrapped, say), whose
    weights are whole (not sharded) and whose dropout is off, so the packed step computes what the
    model's forward computes."""
    layers = getattr(model, "layers", None)
    if layers is None or not hasattr(model, "embed") or (model.training and model.config.dropout > 0):
        return False
    if any(_sharded(p) for p in model.parameters()):
        return False  # FSDP and ZeRO-3 gather a block's weights in its forward hooks, which this bypasses
    names = ("q_proj", "k_proj", "v_proj", "o_proj")
    for block in layers:
        linears = [getattr(block.attention, n) for n in names]
        linears += [m for m in block.mlp.children()]
        if any(type(m) is not nn.Linear for m in linears):
            return False
    return type(model.lm_head) is nn.Linear


ROWS_HINT = 16  # the batch oneDNN's weight layout is chosen for (the server's default rows)


def _onednn_can_pack(model: nn.Module) -> bool:
    """float32 weights on a CPU whose torch has oneDNN's prepacked linear."""
    weight = model.lm_head.weight
    ops = getattr(torch.ops, "mkldnn", None)
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
    )


def _sharded(parameter: torch.Tensor) -> bool:
    """An FSDP2 DTensor shard, or a DeepSpeed ZeRO-3 partition (which carries `ds_id`). DTensor is looked
    up only if something imported it (importing it costs 0.7 s; without it no parameter can be one)."""
    dtensor = sys.modules.get("torch.distributed.tensor")
    return hasattr(parameter, "ds_id") or (dtensor is not None and isinstance(parameter, dtensor.DTensor))


class PackedDecoder:
    """`decoder(input_ids (B, 1), cache)` -> logits (B, 1, V), as `model(input_ids, cache=cache)` gives.

    `transposed=False` keeps the [out, in] layout and `F.linear` (only fusing), which gives bitwise the
    model's logits; the default [in, out] is the faster (see the module docstring).
    """

    def __init__(self, model: nn.Module, transposed: bool = True):
        assert can_pack(model), "PackedDecoder needs a Transformer of plain nn.Linear layers, dropout off"
        self.model, self.transposed = model, transposed
        cfg = model.config
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.blocks = []
        with torch.no_grad():
            for block in model.layers:
                attn, mlp = block.attention, block.mlp
                swiglu = isinstance(mlp, SwiGLU)
                self.blocks.append(
                    _Block(
                        attn_norm=block.attn_norm,
                        qkv=self._pack(attn.q_proj, attn.k_proj, attn.v_proj),
                        q_norm=attn.q_norm,
                        k_norm=attn.k_norm,
                        attend=sdpa_attention if attn.attn_impl == "sdpa" else reference_attention,
                        o=self._pack(attn.o_proj),
                        mlp_norm=block.mlp_norm,
                        up=self._pack(mlp.gate_proj, mlp.up_proj) if swiglu else self._pack(mlp.up_proj),
                        activation=None if swiglu else mlp.activation,
                        down=self._pack(mlp.down_proj),
                    )
                )
            self.head = self._pack(model.lm_head)
        self._rope: tuple[torch.Tensor, torch.Tensor] | None = None  # (slots, hd) each
        # Several rows: oneDNN with its own prepacked weights, built at the first batched step (one more
        # copy of the weights). Measured at llama-10m's shapes, 1 thread (docs/experiments.md, session 5):
        # 148 vs 186 us a projection at 16 rows, 140 vs 389 for the head at 4; at 1 row `x @ w` is faster.
        self._rows: dict[int, torch.Tensor] | None = None
        self._rows_usable = transposed and _onednn_can_pack(model)

    def _pack(self, *linears: nn.Linear) -> Projection:
        weight = torch.cat([m.weight for m in linears]) if len(linears) > 1 else linears[0].weight
        biases = [m.bias for m in linears]
        bias = None if biases[0] is None else torch.cat(biases)
        return (weight.t().contiguous() if self.transposed else weight), bias

    def _project(self, x: torch.Tensor, projection: Projection) -> torch.Tensor:  # (B, in) -> (B, out)
        weight, bias = projection
        if not self.transposed:
            return F.linear(x, weight, bias)
        if x.shape[0] > 1 and self._rows_usable:
            packed = self._rows_packed()[id(weight)]
            return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
        return x @ weight if bias is None else torch.addmm(bias, x, weight)

    def _rows_packed(self) -> dict[int, torch.Tensor]:
        """oneDNN's layout of every projection, by the id of its [in, out] weight (made once)."""
        if self._rows is None:
            projections = [self.head] + [p for b in self.blocks for p in (b.qkv, b.o, b.up, b.down)]
            with torch.no_grad():
                self._rows = {
                    id(w): torch.ops.mkldnn._reorder_linear_weight(w.t().contiguous(), ROWS_HINT)
                    for w, _ in projections
                }
        return self._rows

    @staticmethod
    def _norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """`norm(x)`; an RMSNorm as the one op `F.rms_norm`, which computes the same (one op, not eight)."""
        if isinstance(norm, RMSNorm):
            return F.rms_norm(x, norm.weight.shape, norm.weight, norm.eps)
        return norm(x)

    def _rope_at(self, positions: torch.Tensor, slots: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin at (B,) positions, 2 x (B, 1, 1, hd), from a table over the cache's slots (a
        position never exceeds its slot) of what `rope_cos_sin` computes. The sin's first half is negated:
        rotate_half(x) * sin == roll(x, hd/2) * signed sin, exactly (a sign flip rounds nothing)."""
        if self._rope is None or self._rope[0].shape[0] < slots:
            every = torch.arange(slots, device=positions.device)[None]  # (1, slots)
            cos, sin = rope_cos_sin(every, self.head_dim, self.model.config.rope_theta, dtype)
            half = self.head_dim // 2
            sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
            self._rope = cos[0, 0], sin[0, 0]  # (slots, hd)
        cos, sin = self._rope
        return cos[positions][:, None, None], sin[positions][:, None, None]

    def _rotate(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """`apply_rope` in 4 ops instead of 6: x * cos + rotate_half(x) * sin."""
        cos, signed_sin = rope
        return x * cos + x.roll(self.head_dim // 2, dims=-1) * signed_sin

    def __call__(self, input_ids: torch.Tensor, cache) -> torch.Tensor:
        """input_ids (B, 1), the tokens after what `cache` holds -> logits (B, 1, V); the cache advances."""
        B = input_ids.shape[0]
        cache.reserve(1)
        past = cache.length
        positions = cache.next_position[:, None]  # (B, 1)
        x = self.model.embed(input_ids, positions, cache).view(B, -1)  # (B, d)
        rope = None
        if self.model.config.pos_encoding == "rope":
            rope = self._rope_at(positions[:, 0], cache.max_len, x.dtype)
        mask = None  # one new token may see every filled slot, unless some hold pads
        if cache.padded:
            itself = torch.ones(B, 1, dtype=torch.bool, device=x.device)
            mask = torch.cat([cache.mask[:, :past], itself], dim=1)[:, None, None]  # (B, 1, 1, S)
        for layer, block in enumerate(self.blocks):
            x = x + self._attention(layer, block, self._norm(block.attn_norm, x), rope, mask, cache)
            x = x + self._mlp(block, self._norm(block.mlp_norm, x))
        ngram = self.model.config.ngram_orders
        cache.advance(1, positions, True, input_ids if ngram else None)
        x = self._norm(self.model.final_norm, x)
        return self._project(x, self.head)[:, None]  # (B, 1, V)

    def _attention(self, layer, block: _Block, x, rope, mask, cache) -> torch.Tensor:  # (B, d) -> (B, d)
        B, H, KV, hd = x.shape[0], self.n_heads, self.n_kv_heads, self.head_dim
        qk, v = self._project(x, block.qkv).split([(H + KV) * hd, KV * hd], dim=-1)
        qk, v = qk.view(B, H + KV, 1, hd), v.view(B, KV, 1, hd)  # q's heads, then k's
        if block.q_norm is not None:
            qk = torch.cat([block.q_norm(qk[:, :H]), block.k_norm(qk[:, H:])], dim=1)
        if rope is not None:
            qk = self._rotate(qk, rope)  # q and k at once: the same angles
        q, k = qk.split([H, KV], dim=1)
        k, v = cache.update(layer, k, v)  # (B, KV, S, hd)
        if k.dtype != q.dtype:
            k, v = k.to(q.dtype), v.to(q.dtype)
        y = block.attend(q, k, v, attn_mask=mask)  # (B, H, 1, hd)
        return self._project(y.reshape(B, H * hd), block.o)

    def _mlp(self, block: _Block, x: torch.Tensor) -> torch.Tensor:  # (B, d) -> (B, d)
        h = self._project(x, block.up)
        if block.activation is None:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = block.activation(h)
        return self._project(h, block.down)

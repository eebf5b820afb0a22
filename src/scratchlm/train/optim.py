"""Optimizers: AdamW, and Muon for hidden matrices with AdamW for everything else, as ONE optimizer.

`build_optimizer(model, cfg)` sorts the parameters into roles and returns a `torch.optim.Optimizer`:

- role `embed`:  nn.Embedding weights (token embeddings, value embeddings),
- role `head`:   the output projection (a Linear with `vocab_size` outputs; absent when tied),
- role `scalar`: every parameter with fewer than 2 dimensions (norm gains, biases),
- role `matrix`: every other parameter with 2+ dimensions (attention and MLP projections).

With `cfg.name == "adamw"` every role is stepped by torch's AdamW (fused or foreach kernels), with weight
decay on matrices only: decaying gains and biases pulls them towards 0, which is not a prior anyone wants.

With `cfg.name == "muon"` the `matrix` role is stepped by Muon and the rest by AdamW, inside the one
`MuonAdamW` object below, so the training loop can `step`, `zero_grad`, `state_dict` and `load_state_dict`
it like any optimizer and a scheduler can scale each group's `lr` from its `initial_lr`.

Why Muon (Jordan et al. 2024, "Muon: MomentUm Orthogonalized by Newton-schulz"; the optimizer behind the
modded-nanogpt speedrun records): for a weight matrix, the SGD-momentum update is dominated by a few
directions; replacing it by the nearest semi-orthogonal matrix (U V^T of its SVD) gives every direction
the same step size, which trains hidden layers of transformers in markedly fewer steps than AdamW. The
orthogonalization is approximated with a few Newton-Schulz iterations, which are plain matmuls.
Embeddings and the head are not hidden layers (their inputs are one-hot / their outputs are logits), and
gains are vectors, so they keep AdamW.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from scratchlm.errors import ScratchError

# Quintic Newton-Schulz coefficients (a, b, c) from Jordan's Muon: chosen to push singular values in
# (0, 1] up towards 1 as fast as possible; the result has singular values in roughly [0.7, 1.2], which
# trains as well as an exact orthogonalization and costs 3 matmuls per iteration.
NS_COEFFS = (3.4445, -4.7750, 2.0315)

ROLES = ("embed", "head", "scalar", "matrix")


@dataclass
class OptimConfig:
    """Optimizer settings. Learning rates are peak values; schedules scale them by group `initial_lr`."""

    name: str = "muon"  # "adamw" (everything AdamW) or "muon" (Muon on hidden matrices, AdamW elsewhere)
    lr: float = 3e-3  # AdamW learning rate (all parameters with "adamw"; embed/head/scalars with "muon")
    embed_lr: float | None = None  # AdamW lr for embeddings (None: `lr`)
    head_lr: float | None = None  # AdamW lr for the output head (None: `lr`)
    scalar_lr: float | None = None  # AdamW lr for gains and biases (None: `lr`)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1  # decoupled AdamW decay, applied to matrices only
    muon_lr: float = 0.02  # Muon learning rate (spectral step size) for hidden matrices
    muon_momentum: float = 0.95
    # Momentum warmup (modded-nanogpt): start at muon_momentum_start and rise linearly to muon_momentum
    # over the first muon_momentum_warmup steps (0: off): early gradients change fast, a long EMA lags.
    muon_momentum_start: float = 0.85
    muon_momentum_warmup: int = 0
    muon_nesterov: bool = True
    muon_ns_steps: int = 5  # Newton-Schulz iterations
    muon_ns_dtype: str = "bfloat16"  # dtype of the Newton-Schulz matmuls ("bfloat16" or "float32")
    muon_weight_decay: float = 0.0  # decoupled decay for Muon matrices (scaled by lr, as in AdamW)
    fused: bool | None = None  # AdamW kernels: None picks fused when the parameters allow it

    def __post_init__(self) -> None:
        if self.name not in ("adamw", "muon"):
            raise ScratchError(f"optim.name: unknown optimizer {self.name!r}; use 'adamw' or 'muon'")
        if self.muon_ns_dtype not in ("bfloat16", "float32"):
            raise ScratchError(f"optim.muon_ns_dtype: {self.muon_ns_dtype!r}; use 'bfloat16' or 'float32'")
        for key in ("lr", "muon_lr"):
            if getattr(self, key) <= 0:
                raise ScratchError(f"optim.{key} must be > 0, got {getattr(self, key)}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1 and 0 <= self.muon_momentum < 1):
            raise ScratchError("optim: beta1, beta2 and muon_momentum must lie in [0, 1)")
        if not 0 <= self.muon_momentum_start < 1 or self.muon_momentum_warmup < 0:
            raise ScratchError("optim: muon_momentum_start must lie in [0, 1) and muon_momentum_warmup >= 0")

    def muon_momentum_at(self, step: int) -> float:
        """Muon's momentum for optimizer step `step` (0-based): the warmup ramp, then muon_momentum."""
        if step >= self.muon_momentum_warmup:
            return self.muon_momentum
        frac = step / self.muon_momentum_warmup
        return self.muon_momentum_start + frac * (self.muon_momentum - self.muon_momentum_start)


def parameter_roles(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Sort trainable parameters into the roles above, each parameter once (tied weights count once).

    Roles come from module types, not parameter names, so any model built from nn.Embedding and
    nn.Linear works. The head is the Linear whose output size is the model's vocabulary size.
    """
    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    roles: dict[str, list[nn.Parameter]] = {role: [] for role in ROLES}
    seen: set[int] = set()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if isinstance(module, nn.Embedding):
                role = "embed"
            elif param.ndim < 2:
                role = "scalar"
            elif (
                isinstance(module, nn.Linear) and vocab_size is not None and module.out_features == vocab_size
            ):
                role = "head"
            else:
                role = "matrix"
            roles[role].append(param)
    return roles


@torch.no_grad()
def newton_schulz(grad: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Approximate the orthogonal polar factor U V^T of a matrix (or a batch of them) with quintic NS.

    Each iteration maps X -> a X + b (X X^T) X + c (X X^T)^2 X, an odd polynomial applied to the singular
    values of X (the singular vectors stay put). Starting from X / ||X||_F (all singular values <= 1)
    the iterations drive every singular value towards 1. Works on the wide orientation (rows <= cols) so
    X X^T is the smaller Gram matrix.
    """
    assert grad.ndim >= 2
    x = grad.to(dtype)  # (..., m, n)
    transposed = x.size(-2) > x.size(-1)
    if transposed:
        x = x.mT  # (..., n, m) with n < m
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    a, b, c = NS_COEFFS
    for _ in range(steps):
        gram = x @ x.mT  # (..., rows, rows)
        poly = b * gram + c * (gram @ gram)
        x = a * x + poly @ x
    if transposed:
        x = x.mT
    return x.to(grad.dtype)


class MuonAdamW(torch.optim.Optimizer):
    """Muon for groups with `kind="muon"`, AdamW for groups with `kind="adamw"`: one object, one state.

    Muon step for a matrix W with gradient G (shape rows x cols):
        m <- momentum * m + (1 - momentum) * G                 (an EMA of gradients)
        u <- (1 - momentum) * G + momentum * m  if nesterov else m
        W <- W * (1 - lr * weight_decay) - lr * sqrt(max(1, rows / cols)) * NS(u)
    NS(u) has unit spectral norm, so `lr` is the step's size in spectral norm; the sqrt(rows / cols)
    factor keeps the per-entry RMS of the update comparable for tall matrices (MLP up-projections),
    whose orthogonalized updates have smaller entries (Jordan's "shape-aware" scaling).

    Under FSDP each parameter, gradient and momentum buffer is a DTensor holding 1/world of the rows.
    Momentum stays sharded; the update is all-gathered (`full_tensor`), orthogonalized whole on every
    rank, and each rank keeps its own rows (`distribute_tensor(src_data_rank=None)`: no communication).
    The cost per step: one more all-gather of every hidden matrix (as much traffic again as FSDP's
    forward gather of those weights), the whole updates of all of them in memory during the step, and the
    Newton-Schulz FLOPs repeated on every rank instead of split among them (Moonlight, Liu et al. 2025,
    instead assigns each matrix to one rank and scatters the results: less compute, the same traffic).

    AdamW step (Loshchilov & Hutter) with bias correction, written out per parameter so it reads as the
    paper's equations; the parameters under AdamW here are few (embeddings, head, gains), so a Python
    loop over them costs little next to the forward and backward passes.
    """

    def __init__(self, param_groups: list[dict], defaults: dict | None = None) -> None:
        for group in param_groups:
            assert group.get("kind") in ("muon", "adamw"), "each group needs kind='muon' or 'adamw'"
        super().__init__(param_groups, defaults or {})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["kind"] == "muon":
                self._muon_group(group)
            else:
                self._adamw_group(group)
        return loss

    def _muon_group(self, group: dict) -> None:
        lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
        ns_dtype = getattr(torch, group["ns_dtype"])
        # Momentum per matrix; then one batched Newton-Schulz per distinct shape (all q/k/v/o projections
        # of a model share one shape): 2-3 batched calls instead of 15 small matmuls per matrix, which on
        # CPU halves the optimizer's share of a step for a 4-layer, width-128 model (measured).
        by_shape: dict[tuple[int, int], list[tuple[nn.Parameter, torch.Tensor]]] = {}
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - momentum)
            update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
            if isinstance(update, DTensor):
                update = update.full_tensor()  # FSDP: Newton-Schulz needs the whole matrix (see below)
            matrix = update.reshape(update.size(0), -1)  # conv-like >2-D weights: (out, everything else)
            if matrix.size(0) > matrix.size(1):
                matrix = matrix.mT  # tall and wide share a batch: NS(X^T) = NS(X)^T
            by_shape.setdefault(tuple(matrix.shape), []).append((p, matrix))
        for (rows, cols), items in by_shape.items():
            ortho = newton_schulz(
                torch.stack([m for _, m in items]), group["ns_steps"], ns_dtype
            )  # (n, r, c)
            for (p, _), o in zip(items, ortho):
                rows_p, cols_p = p.size(0), p[0].numel()
                o = o if (rows_p, cols_p) == (rows, cols) else o.mT
                scale = math.sqrt(max(1.0, rows_p / cols_p))
                o = o.reshape(p.shape)
                if isinstance(p, DTensor):  # every rank computed the same whole update: keep its own shard
                    o = distribute_tensor(o, p.device_mesh, p.placements, src_data_rank=None)
                if decay:
                    p.mul_(1 - lr * decay)
                p.add_(o, alpha=-lr * scale)

    def _adamw_group(self, group: dict) -> None:
        lr, decay, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            step = state["step"]
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            exp_avg.lerp_(p.grad, 1 - beta1)  # m <- b1 m + (1 - b1) g
            exp_avg_sq.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)  # v <- b2 v + (1 - b2) g^2
            bias1 = 1 - beta1**step
            bias2 = 1 - beta2**step
            denom = (exp_avg_sq / bias2).sqrt_().add_(eps)
            if decay:
                p.mul_(1 - lr * decay)
            p.addcdiv_(exp_avg, denom, value=-lr / bias1)


def _adamw_groups(roles: dict[str, list[nn.Parameter]], cfg: OptimConfig, include_matrix: bool) -> list[dict]:
    """One AdamW group per non-empty role, with its lr and matrix-only weight decay."""
    lrs = {
        "embed": cfg.embed_lr if cfg.embed_lr is not None else cfg.lr,
        "head": cfg.head_lr if cfg.head_lr is not None else cfg.lr,
        "scalar": cfg.scalar_lr if cfg.scalar_lr is not None else cfg.lr,
        "matrix": cfg.lr,
    }
    names = ("embed", "head", "scalar", "matrix") if include_matrix else ("embed", "head", "scalar")
    groups = []
    for role in names:
        if roles[role]:
            decay = 0.0 if role == "scalar" else cfg.weight_decay
            groups.append({"params": roles[role], "role": role, "lr": lrs[role], "weight_decay": decay})
    return groups


def _fused_ok(params: list[nn.Parameter], cfg: OptimConfig) -> bool:
    if cfg.fused is not None:
        return cfg.fused
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer `cfg` asks for over `model`'s trainable parameters.

    Every group carries `role` (embed/head/scalar/matrix) and `initial_lr` (its peak lr), so schedules
    set `group["lr"] = group["initial_lr"] * factor` without knowing which optimizer is inside.
    """
    roles = parameter_roles(model)
    if not any(roles.values()):
        raise ScratchError("build_optimizer: the model has no trainable parameters")
    betas = (cfg.beta1, cfg.beta2)
    if cfg.name == "adamw":
        groups = _adamw_groups(roles, cfg, include_matrix=True)
        params = [p for g in groups for p in g["params"]]
        kernel = {"fused": True} if _fused_ok(params, cfg) else {"foreach": True}
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, eps=cfg.eps, **kernel)
    else:
        groups = [
            {**g, "kind": "adamw", "betas": betas, "eps": cfg.eps} for g in _adamw_groups(roles, cfg, False)
        ]
        if roles["matrix"]:
            groups.append(
                {
                    "params": roles["matrix"],
                    "role": "matrix",
                    "kind": "muon",
                    "lr": cfg.muon_lr,
                    "momentum": cfg.muon_momentum,
                    "nesterov": cfg.muon_nesterov,
                    "ns_steps": cfg.muon_ns_steps,
                    "ns_dtype": cfg.muon_ns_dtype,
                    "weight_decay": cfg.muon_weight_decay,
                }
            )
        optimizer = MuonAdamW(groups)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    return optimizer

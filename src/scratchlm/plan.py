"""What a training run will cost before anything runs: parameters, FLOPs, memory per GPU, fit, tokens, time
and money.

    plan = make_plan(get_preset("llama-100m"), gpus="8xH100", parallel="zero2", micro_batch=8)
    print(format_plan(plan))

The estimates, each from its paper:
- **Compute:** FLOPs per token of a training step, 6N plus the attention term 12 * layers * d_model * T
  (Kaplan et al. 2020; PaLM, Chowdhery et al. 2022, app. B): `Transformer.flops_per_token`.
- **Weights, gradients and optimizer state** per parameter, for each precision and optimizer
  (`state_bytes_per_param`). Mixed-precision Adam is the ZeRO paper's 2 + 2 + 12 = 16 bytes (Rajbhandari et
  al. 2020, sec. 3.1). Sharded over N data-parallel ranks as the ZeRO stages divide them: stage 1 the
  optimizer state (master weights included), stage 2 also the gradients, stage 3 (and FSDP's full
  sharding) the weights too.
- **Activations** (`activation_bytes`): derived below for this project's own blocks and checked against
  the bytes autograd saves and the peak measured on CPU (`measure_activation_peak`, tests and
  benchmarks/bench_plan_memory.py). Korthikanti et al. 2022's GPT formula, s b h (34 + 5 a s / h) bytes per
  layer, stays beside it as the reference (`korthikanti_activation_bytes`).
- **Tokens:** Chinchilla's compute-optimal count, about 20 per parameter (Hoffmann et al. 2022).
- **Time:** total FLOPs / (GPUs x dense bf16 peak x MFU), checked against published runs (`PUBLISHED_RUNS`).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from scratchlm.errors import ScratchError
from scratchlm.model.config import ModelConfig
from scratchlm.model.device import autocast_context
from scratchlm.model.presets import PRESETS
from scratchlm.model.transformer import Transformer
from scratchlm.train.config import resolve_model_config
from scratchlm.train.optim import parameter_roles
from scratchlm.train.trainer import enable_activation_checkpointing

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, and memory, GB, from each vendor's datasheet.
GPUS = {
    "H100": (989.4, 80, "NVIDIA H100 Tensor Core GPU datasheet, SXM5: BF16 1,979 TFLOPS with sparsity"),
    "H100-PCIE": (756.0, 80, "NVIDIA H100 datasheet, PCIe: BF16 1,513 TFLOPS with sparsity"),
    "H200": (989.4, 141, "NVIDIA H200 Tensor Core GPU datasheet, SXM: BF16 1,979 TFLOPS with sparsity"),
    "A100": (312.0, 80, "NVIDIA A100 Tensor Core GPU datasheet: BF16 312 TFLOPS (624 with sparsity)"),
    "A100-40GB": (312.0, 40, "NVIDIA A100 Tensor Core GPU datasheet: BF16 312 TFLOPS (624 with sparsity)"),
    "L40S": (362.05, 48, "NVIDIA L40S datasheet: BF16 733 TFLOPS with sparsity"),
    "MI300X": (1307.4, 192, "AMD Instinct MI300X datasheet: BF16 1,307.4 TFLOPS dense"),
}
PARALLEL = ("ddp", "fsdp", "zero1", "zero2", "zero3")
STAGE = {"ddp": 0, "zero1": 1, "zero2": 2, "zero3": 3, "fsdp": 3}  # what each shards, as ZeRO's stages
CHECKPOINTING = ("none", "selective", "full")
# Bytes per parameter of (weights, gradients, fp32 master copy), and of one optimizer state tensor.
# - fp32: everything in fp32; the weights are their own master.
# - bf16-autocast: this project's `precision: bf16` (train/trainer.py): fp32 weights, gradients and state;
#   autocast casts each matmul weight to bf16 for the step (`autocast_copies`).
# - bf16-mixed: 16-bit weights and gradients with an fp32 master copy inside the optimizer state (ZeRO sec.
#   3.1's K = 12 for Adam; DeepSpeed's bf16, Megatron). FSDP2's MixedPrecisionPolicy keeps fp32 shards
#   (4 + 4 + 8) instead: the same 16 bytes, and under full sharding divided the same way.
# - bf16-pure: bf16 weights, gradients and optimizer state, no master copy (torch's AdamW on bf16 params).
PRECISIONS = {"fp32": (4, 4, 0, 4), "bf16-autocast": (4, 4, 0, 4), "bf16-mixed": (2, 2, 4, 4),
              "bf16-pure": (2, 2, 0, 2)}  # fmt: skip
# State tensors per parameter (muon: of the hidden matrices it steps; the rest is AdamW, train/optim.py).
# adamw8bit: two 1-byte states (bitsandbytes, Dettmers et al. 2022), plus an fp32 scale per 2048-value block.
OPTIMIZERS = {"adamw": 2, "muon": 1, "sgd": 1, "adamw8bit": 2}
RECIPE_PRECISION = {"bf16": "bf16-autocast", "fp32": "fp32"}  # a recipe's `precision:` in planner terms
DEFAULT_MFU = 0.4
TOKENS_PER_PARAM = 20  # Chinchilla
USABLE = 0.9  # of a GPU's memory: the allocator, CUDA context and fragmentation take the rest

# Published shapes the planner is checked against (model presets stay this project's own models).
# Llama 2 7B (Touvron et al. 2023; Hugging Face meta-llama/Llama-2-7b-hf config.json).
PUBLISHED_SHAPES = {
    "llama2-7b": ModelConfig(vocab_size=32000, context_length=4096, n_layers=32, d_model=4096, n_heads=32,
                             n_kv_heads=32, d_ff=11008, tie_embeddings=False),
}  # fmt: skip


@dataclass(frozen=True)
class PublishedRun:
    """A training run's published hardware and duration: the planner's GPU-hours must reproduce it."""

    name: str
    gpus: str
    hours: float  # wall-clock
    source: str
    shape: str | None = None  # a preset or PUBLISHED_SHAPES name, with `tokens`
    tokens: float = 0
    flops: float = 0  # the run's own total, where no shape is given


PUBLISHED_RUNS = (
    PublishedRun("Llama 2 7B", "1xA100", 184_320, "Touvron et al. 2023, Llama 2, table 2: 184,320 "
                 "A100-80GB GPU-hours for 2T tokens", shape="llama2-7b", tokens=2e12),
    PublishedRun("GPT-2 124M (llm.c)", "8xA100", 1.5, "Karpathy 2024, llm.c discussion #481: 10B tokens in "
                 "about 90 minutes on 8xA100 80GB SXM", shape="gpt2-124m", tokens=10e9),
    PublishedRun("nanochat speedrun", "8xH100", 2.0, "karpathy/nanochat README and dev/LEADERBOARD.md: "
                 "about 4e19 FLOPs, under 2 hours on 8xH100 (an upper bound on time)", flops=4e19),
)  # fmt: skip


def parse_gpus(text: str) -> tuple[int, str]:
    """`"8xH100"` -> (8, "H100"); `"H100"` -> (1, "H100")."""
    match = re.fullmatch(r"(?:(\d+)\s*[xX*]\s*)?([A-Za-z0-9-]+)", text.strip())
    name = match[2].upper() if match else ""
    if not match or name not in GPUS or (match[1] is not None and int(match[1]) < 1):
        raise ScratchError(f"--gpus {text!r}: write COUNTxNAME, e.g. 8xH100; known GPUs: {', '.join(GPUS)}")
    return int(match[1] or 1), name


def get_shape(name: str) -> ModelConfig:
    """A model preset or a published shape (`PUBLISHED_SHAPES`) by name."""
    if name in PUBLISHED_SHAPES:
        return PUBLISHED_SHAPES[name].replace()
    if name not in PRESETS:
        names = ", ".join([*PRESETS, *PUBLISHED_SHAPES])
        raise ScratchError(f"unknown model preset {name!r}; choose one of {names}")
    return PRESETS[name].replace()


def _choice(flag: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ScratchError(f"--{flag} {value!r}: use one of {', '.join(allowed)}")


def state_bytes_per_param(
    parallel: str, ranks: int, precision: str = "bf16-mixed", optimizer: str = "adamw",
    matrix_fraction: float = 1.0,
) -> dict[str, float]:  # fmt: skip
    """Bytes per parameter on one GPU for weights, gradients and optimizer state (master copy included).

    `matrix_fraction`: the share of parameters in hidden matrices, which Muon steps with one momentum; the
    rest (embeddings, head, gains) keeps AdamW's two states, as in train/optim.py.
    """
    _choice("parallel", parallel, PARALLEL)
    _choice("precision", precision, PRECISIONS)
    _choice("optimizer", optimizer, OPTIMIZERS)
    weights, grads, master, state = PRECISIONS[precision]
    states = OPTIMIZERS[optimizer]
    if optimizer == "muon":
        states = matrix_fraction * 1 + (1 - matrix_fraction) * OPTIMIZERS["adamw"]
    per_state = 1 + 4 / 2048 if optimizer == "adamw8bit" else state
    stage = STAGE[parallel]
    return {
        "weights": weights / (ranks if stage >= 3 else 1),
        "gradients": grads / (ranks if stage >= 2 else 1),
        "optimizer": (master + states * per_state) / (ranks if stage >= 1 else 1),
    }


# --- activations -----------------------------------------------------------------------------------------
#
# Bytes per token that one fwd+bwd holds, for this project's blocks (model/transformer.py), derived from
# what autograd saves (an op keeps only what the gradient of an input that needs one reads: RoPE's q*cos
# keeps cos, not q). h: d_model, g: n_kv_heads * head_dim, f: d_ff, a: heads, v: vocabulary; `act` the bytes
# of a matmul output (4 fp32, 2 bf16), `stream` of the residual stream (4 under fp32 and autocast, whose
# embeddings and residual adds stay fp32; 2 when the weights are bf16).
# - Norm: RMSNorm computes in fp32 (model/layers.py), so it keeps an fp32 input (the input or its fp32
#   copy, 4h) and x/rms (stream h); LayerNorm keeps its input (stream h). Its output is kept by the linears
#   that read it: once (act h), or under autocast once per reader, each casting to bf16 on its own (3 for
#   q/k/v, 2 for SwiGLU's gate/up).
# - Attention (SDPA, flash-style): q, k, v after RoPE (act h, g, g), the output (act h) and the fp32
#   log-sum-exp (4a); no s x s term. The reference softmax keeps fp32 probabilities (and a bf16 copy under
#   16-bit): a s (4 or 6) per token, with k and v repeated to h. QK-norm adds (4 + act)(h + g).
# - MLP: SwiGLU keeps gate, up, silu(gate) and their product (4 act f); GELU and ReLU^2 two (2 act f).
#   Dropout is not modelled: with dropout SDPA falls back to its math kernel on CPU, which keeps s x s
#   probabilities and masks (measured 2-3x this estimate at a tiny size); every preset trains without it.
# - Head: the final norm, and cross entropy's fp32 log-softmax (4v; train/causal_lm.py upcasts the logits).
# - The peak comes at the start of backward: the fp32 gradients of the log-probabilities and of the logits
#   (8v) on top of all of the above. With full checkpointing only each block's input (stream h) and RoPE's
#   cos and sin stay, and the peak is the larger of the head's (above) and one block's recompute, its
#   saved bytes plus two f-wide gradients (2 act f).
# Korthikanti et al. 2022's sbh(34 + 5as/h) differs because it models GPT-3 blocks in 16 bits with
# dropout masks, GELU and materialised attention scores, where SDPA keeps no s x s term.


def _dtype_bytes(precision: str) -> tuple[int, int]:
    """(act, stream) of the legend above."""
    return (4, 4) if precision == "fp32" else (2, 4) if precision == "bf16-autocast" else (2, 2)


def activation_terms(config: ModelConfig, precision: str = "bf16-mixed") -> dict[str, float]:
    """Bytes per token of each term of the derivation above (micro-batch and sequence multiply them)."""
    _choice("precision", precision, PRECISIONS)
    act, stream = _dtype_bytes(precision)
    h, f, a, s, v = config.d_model, config.d_ff, config.n_heads, config.context_length, config.vocab_size
    g = config.n_kv_heads * config.head_dim
    autocast = precision == "bf16-autocast"

    def norm(readers: int) -> float:
        kept = (4 + stream) * h if config.norm == "rmsnorm" else stream * h
        return kept + (readers if autocast else 1) * act * h

    mlp_readers, mlp_kept = (2, 4) if config.mlp == "swiglu" else (1, 2)
    reference = config.attn_impl == "reference"
    kv = h if reference and g < h else g  # the reference repeats k and v for every query head
    attention = act * (h + 2 * kv + h) + (0 if reference else 4 * a)
    if config.qk_norm:
        attention += (4 + act) * (h + g)
    scores = a * s * (4 + (2 if act == 2 else 0)) if reference else 0.0
    layer = norm(3) + attention + norm(mlp_readers) + mlp_kept * act * f
    rope = 2 * config.head_dim * stream if config.pos_encoding == "rope" else 0  # cos, sin: once, all layers
    return {
        "layer": layer + scores,  # without recomputation
        "scores": scores,  # what selective recomputation drops (Korthikanti et al.'s recomputed core)
        "layer_input": stream * h,  # what full recomputation keeps per layer
        "head": norm(1) + 4 * v,
        "head_backward": 8 * v,
        "layer_backward": 2 * act * f,
        "shared": rope,
    }


def activation_bytes(
    config: ModelConfig, micro_batch: int, checkpointing: str, precision: str = "bf16-mixed"
) -> float:
    """Peak activation bytes of one micro-batch's fwd+bwd on one GPU (the derivation above)."""
    _choice("checkpointing", checkpointing, CHECKPOINTING)
    t = activation_terms(config, precision)
    tokens, layers = micro_batch * config.context_length, config.n_layers
    head_peak = t["head"] + t["head_backward"]
    if checkpointing == "full":
        recompute = t["layer"] - t["scores"] + t["layer_backward"]  # a block recomputed, then its backward
        per_token = layers * t["layer_input"] + t["shared"] + max(head_peak, recompute)
    else:
        layer = t["layer"] - (t["scores"] if checkpointing == "selective" else 0)
        per_token = layers * layer + t["shared"] + head_peak
    return tokens * per_token


def korthikanti_activation_bytes(config: ModelConfig, micro_batch: int, checkpointing: str) -> float:
    """Korthikanti et al. 2022's activation memory of all layers for one micro-batch, the GPT reference.

    Per layer, tensor parallelism 1: sbh(34 + 5as/h) without recomputation (eq. 2); 34sbh with selective
    recomputation of the attention core; 2sbh with full recomputation (each layer's 16-bit input).
    """
    _choice("checkpointing", checkpointing, CHECKPOINTING)
    s, b, h, a = config.context_length, micro_batch, config.d_model, config.n_heads
    per_layer = {"none": s * b * h * (34 + 5 * a * s / h), "selective": 34 * s * b * h, "full": 2 * s * b * h}
    return per_layer[checkpointing] * config.n_layers


def measure_activation_peak(
    config: ModelConfig, micro_batch: int, checkpointing: bool, precision: str = "fp32", seed: int = 0
) -> int:
    """The slow twin of `activation_bytes`: peak bytes allocated on CPU by one training fwd+bwd.

    The loss is causal_lm's (logits upcast to fp32), under the trainer's autocast and its activation
    checkpointing (`enable_activation_checkpointing`), so this is what a run allocates. Gradients exist
    before the measured step, as after a run's first, so only activations and transients are counted
    (with autocast's bf16 weight copies). torch's profiler counts every allocation and free made while it
    runs ("Total Allocated"), which makes the peak exact and independent of the machine's load.
    """
    assert precision in ("fp32", "bf16-autocast"), "a CPU run trains fp32 weights"
    torch.manual_seed(seed)
    model = Transformer(config)
    if checkpointing:
        enable_activation_checkpointing(model)
    ids = torch.randint(0, config.vocab_size, (micro_batch, config.context_length + 1))

    def step():
        with autocast_context("cpu", "bfloat16" if precision == "bf16-autocast" else "float32"):
            logits = model(ids[:, :-1])  # (b, T, V)
            loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten(), reduction="sum")
            del logits  # causal_lm's loss() returns; only autograd keeps what it needs
            loss.backward()

    step()
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    return max(e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]")


# --- the plan --------------------------------------------------------------------------------------------


@dataclass
class Plan:
    params: int
    flops_per_token: float
    gpus: int
    gpu: str
    parallel: str
    checkpointing: str
    precision: str
    optimizer: str
    micro_batch: int
    memory_gb: dict  # per GPU: weights, gradients, optimizer, autocast_copies, activations, total
    fits: bool
    max_micro_batch: int  # the largest that fits (0: not even 1)
    tokens: int
    chinchilla_tokens: int
    hours: float
    gpu_hours: float
    mfu: float
    cost: float | None
    peak_source: str

    def to_dict(self) -> dict:
        return asdict(self)


def training_hours(total_flops: float, gpus: str, mfu: float) -> float:
    """Wall-clock hours of `total_flops` on `gpus` (e.g. "8xH100") at `mfu` of their dense bf16 peak."""
    count, gpu = parse_gpus(gpus)
    return total_flops / (count * GPUS[gpu][0] * 1e12 * mfu) / 3600


def implied_mfu(total_flops: float, gpus: str, hours: float) -> float:
    """The MFU at which `total_flops` take `hours` on `gpus`: the inverse of `training_hours`."""
    return training_hours(total_flops, gpus, 1.0) / hours


def run_flops(run: PublishedRun) -> float:
    """A published run's total training FLOPs: its own figure, or the planner's FLOPs per token x tokens."""
    if run.flops:
        return run.flops
    with torch.device("meta"):
        return run.tokens * Transformer(get_shape(run.shape)).flops_per_token(training=True)


def make_plan(
    config: ModelConfig, *, gpus: str = "1xH100", parallel: str = "ddp", checkpointing: str = "none",
    precision: str = "bf16-mixed", optimizer: str = "adamw", micro_batch: int = 1, tokens: int | None = None,
    mfu: float = DEFAULT_MFU, price_per_gpu_hour=None,
) -> Plan:  # fmt: skip
    """The plan of training `config` (see the module docstring); `tokens` None: Chinchilla's count."""
    if micro_batch < 1 or not 0 < mfu <= 1:
        raise ScratchError(f"--micro-batch must be >= 1 and --mfu in (0, 1], got {micro_batch} and {mfu}")
    count, gpu = parse_gpus(gpus)
    peak_tflops, memory, source = GPUS[gpu]
    with torch.device("meta"):  # the real module's parameter count, with no memory
        model = Transformer(config)
    params = model.num_params()
    flops = model.flops_per_token(training=True)
    roles = {role: sum(p.numel() for p in group) for role, group in parameter_roles(model).items()}
    per_param = state_bytes_per_param(parallel, count, precision, optimizer, roles["matrix"] / params)
    memory_gb = {k: v * params / 1e9 for k, v in per_param.items()}
    # Autocast's bf16 copy of every matmul weight (the head too, tied or not) lives from forward to backward.
    matmul = roles["matrix"] + roles["head"] + (model.lm_head.weight.numel() if config.tie_embeddings else 0)
    memory_gb["autocast_copies"] = 2 * matmul / 1e9 if precision == "bf16-autocast" else 0.0
    memory_gb["activations"] = activation_bytes(config, micro_batch, checkpointing, precision) / 1e9
    memory_gb["total"] = sum(memory_gb.values())
    budget = memory * USABLE
    fixed = memory_gb["total"] - memory_gb["activations"]
    per_sample = activation_bytes(config, 1, checkpointing, precision) / 1e9
    max_micro = max(0, math.floor((budget - fixed) / per_sample)) if budget > fixed else 0
    chinchilla = TOKENS_PER_PARAM * params
    tokens = int(tokens or chinchilla)
    hours = training_hours(tokens * flops, gpus, mfu)
    gpu_hours = hours * count
    cost = gpu_hours * price_per_gpu_hour if price_per_gpu_hour is not None else None
    return Plan(params, flops, count, gpu, parallel, checkpointing, precision, optimizer, micro_batch,
                memory_gb, memory_gb["total"] <= budget, max_micro, tokens, chinchilla, hours, gpu_hours, mfu,
                cost, source)  # fmt: skip


def check_fits(plan: Plan, config: ModelConfig) -> None:
    """A ScratchError naming what to change when the plan does not fit even at micro-batch 1."""
    if plan.max_micro_batch >= 1:
        return
    budget = GPUS[plan.gpu][1] * USABLE
    gpus = f"{plan.gpus}x{plan.gpu}"
    settings = dict(gpus=gpus, parallel=plan.parallel, checkpointing=plan.checkpointing,
                    precision=plan.precision, optimizer=plan.optimizer)  # fmt: skip

    def fits(**change) -> bool:
        return make_plan(config, **{**settings, **change}).max_micro_batch >= 1

    fixes = []
    deeper = [p for p in ("zero1", "zero2", "zero3") if STAGE[p] > STAGE[plan.parallel]]
    shard = next((p for p in deeper if fits(parallel=p)), None)
    if shard:
        fixes.append(f"--parallel {shard}")
    if plan.checkpointing != "full" and fits(checkpointing="full"):
        fixes.append("--checkpointing full")
    # More GPUs shrink only what is sharded: the states under ZeRO-3/FSDP, never the activations.
    sharded = "fsdp" if plan.parallel == "fsdp" else "zero3"
    counts = [2**k for k in range(1, 14) if 2**k > plan.gpus]
    more = next(
        (n for n in counts if fits(gpus=f"{n}x{plan.gpu}", parallel=sharded, checkpointing="full")), None
    )
    if more and not shard:
        fixes.append(f"--gpus {more}x{plan.gpu} --parallel {sharded} --checkpointing full")
    fixes.append("a smaller model or context")
    states = plan.memory_gb["total"] - plan.memory_gb["activations"]
    one = activation_bytes(config, 1, plan.checkpointing, plan.precision) / 1e9
    raise ScratchError(
        f"plan: does not fit even at micro-batch 1 on {gpus} ({plan.parallel}, {plan.precision}, "
        f"checkpointing {plan.checkpointing}): {states:.1f} GB of weights, gradients and optimizer state + "
        f"{one:.1f} GB of activations > {budget:.0f} GB usable per GPU; try {' or '.join(fixes)}"
    )


def recipe_settings(recipe, gpus: str) -> dict:
    """The planner's settings a pretraining recipe fixes: model, parallelism, precision, optimizer,
    checkpointing, and the micro-batch its data.batch_size gives on `gpus` (a world size that does not
    divide it is an error). FSDP2's MixedPrecisionPolicy computes with bf16 parameters over fp32 shards: its
    16 bytes per parameter divide as bf16-mixed's do, and its activations are bf16-mixed's."""
    # A character vocabulary is known only once the tokenizer is trained: 256 bounds it.
    vocab = recipe.data.vocab_size if recipe.data.tokenizer == "bpe" else 256
    config = resolve_model_config(recipe.model, vocab)
    count, _ = parse_gpus(gpus)
    rows = (
        recipe.data.batch_size * (recipe.data.short_context or config.context_length) // config.context_length
    )
    micro, accum = rows // (count * recipe.data.grad_accum), recipe.data.grad_accum
    if micro == 0 or micro * count * accum != rows:
        raise ScratchError(
            f"data.batch_size: {rows} sequences a step are not divisible by {count} GPUs x grad_accum "
            f"{accum}; change --gpus, data.batch_size or data.grad_accum"
        )
    checkpointing = "full" if recipe.activation_checkpointing else "none"  # the trainer wraps whole blocks
    parallel = "fsdp" if getattr(recipe, "parallel", "ddp") == "fsdp" else "ddp"
    precision = RECIPE_PRECISION[recipe.precision]
    if parallel == "fsdp" and precision == "bf16-autocast":  # train/parallel.py: bf16 params on the GPU
        precision = "bf16-mixed"
    return {"config": config, "parallel": parallel, "precision": precision, "optimizer": recipe.optim.name,
            "checkpointing": checkpointing, "micro_batch": micro}  # fmt: skip


def format_plan(plan: Plan) -> str:
    m = plan.memory_gb
    gpu_memory = GPUS[plan.gpu][1]
    copies = (
        [f"  autocast copies {m['autocast_copies']:.2f} GB (bf16 matmul weights)"]
        if m["autocast_copies"]
        else []
    )
    lines = [
        f"parameters        {plan.params:,} ({plan.params / 1e6:.1f}M)",
        f"FLOPs per token   {plan.flops_per_token:.3e} (training step: 6N + attention)",
        f"memory per GPU    {m['total']:.2f} GB of {gpu_memory} GB ({plan.parallel}, {plan.gpus} GPUs, "
        f"{plan.precision}, {plan.optimizer}, checkpointing {plan.checkpointing}, "
        f"micro-batch {plan.micro_batch})",
        f"  weights         {m['weights']:.2f} GB",
        f"  gradients       {m['gradients']:.2f} GB",
        f"  optimizer state {m['optimizer']:.2f} GB",
        *copies,
        f"  activations     {m['activations']:.2f} GB",
        f"fit               {'yes' if plan.fits else 'NO'}; the largest micro-batch that fits: "
        f"{plan.max_micro_batch} (in {USABLE:.0%} of the memory)",
        f"tokens            {plan.tokens:,} (Chinchilla-optimal: {plan.chinchilla_tokens:,}, 20 per "
        "parameter)",
        f"time              {plan.hours:.2f} h on {plan.gpus}x{plan.gpu} at MFU {plan.mfu:.0%} "
        f"({plan.gpu_hours:.1f} GPU-hours)",
        f"cost              {f'{plan.cost:,.2f}' if plan.cost is not None else 'give --price-per-gpu-hour'}",
        f"peak              {GPUS[plan.gpu][0]} TFLOP/s dense bf16 ({plan.peak_source})",
    ]
    return "\n".join(lines)

"""What a training run will cost before anything runs: parameters, FLOPs, memory per GPU, fit, tokens, time
and money.

    plan = make_plan(get_preset("llama-100m"), gpus="8xH100", parallel="zero2", micro_batch=8)
    print(format_plan(plan))

The estimates, each from its paper:
- **Compute:** FLOPs per token of a training step, 6N plus the attention term 12 * layers * d_model * T
  (Kaplan et al. 2020; PaLM, Chowdhery et al. 2022, app. B): `Transformer.flops_per_token`.
- **Weights, gradients and optimizer state** per parameter for mixed-precision Adam: 2 bytes of bf16
  weights, 2 of gradients, 12 of fp32 state (master weights, momentum, variance), 16 in all (ZeRO,
  Rajbhandari et al. 2020, sec. 3.1). Sharded over N data-parallel ranks as the ZeRO stages divide them:
  stage 1 the 12, stage 2 the 12 and the 2 of gradients, stage 3 (and FSDP's full sharding) all 16.
- **Activations** per layer, in bytes, without recomputation: s b h (34 + 5 a s / h) (Korthikanti et al.
  2022, eq. 2, tensor parallelism 1); with selective recomputation (the attention scores and softmax
  recomputed): 34 s b h; with full recomputation (only each layer's input kept): 2 s b h. s: sequence,
  b: micro-batch, h: d_model, a: heads. The formula assumes a 4h MLP and 16-bit activations; it is the
  paper's estimate, not a measurement of this code.
- **Tokens:** Chinchilla's compute-optimal count, about 20 per parameter (Hoffmann et al. 2022).
- **Time:** total FLOPs / (GPUs x dense bf16 peak x MFU).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import torch

from scratchlm.errors import ScratchError
from scratchlm.model.config import ModelConfig
from scratchlm.model.transformer import Transformer

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
CHECKPOINTING = ("none", "selective", "full")
BYTES_WEIGHTS, BYTES_GRADS, BYTES_ADAM = 2, 2, 12  # mixed-precision Adam, per parameter (ZeRO sec. 3.1)
TOKENS_PER_PARAM = 20  # Chinchilla
USABLE = 0.9  # of a GPU's memory: the allocator, CUDA context and fragmentation take the rest


def parse_gpus(text: str) -> tuple[int, str]:
    """`"8xH100"` -> (8, "H100"); `"H100"` -> (1, "H100")."""
    match = re.fullmatch(r"(?:(\d+)\s*[xX*]\s*)?([A-Za-z0-9-]+)", text.strip())
    name = match[2].upper() if match else ""
    if not match or name not in GPUS or (match[1] is not None and int(match[1]) < 1):
        raise ScratchError(f"--gpus {text!r}: write COUNTxNAME, e.g. 8xH100; known GPUs: {', '.join(GPUS)}")
    return int(match[1] or 1), name


def state_bytes_per_param(parallel: str, ranks: int) -> dict[str, float]:
    """Bytes per parameter on one GPU for weights, gradients and Adam state, under `parallel`."""
    if parallel not in PARALLEL:
        raise ScratchError(f"--parallel {parallel!r}: use one of {', '.join(PARALLEL)}")
    stage = {"ddp": 0, "zero1": 1, "zero2": 2, "zero3": 3, "fsdp": 3}[parallel]
    return {
        "weights": BYTES_WEIGHTS / (ranks if stage >= 3 else 1),
        "gradients": BYTES_GRADS / (ranks if stage >= 2 else 1),
        "optimizer": BYTES_ADAM / (ranks if stage >= 1 else 1),
    }


def activation_bytes(config: ModelConfig, micro_batch: int, checkpointing: str) -> float:
    """Korthikanti et al. 2022's activation memory of all layers for one micro-batch (module docstring)."""
    s, b, h, a = config.context_length, micro_batch, config.d_model, config.n_heads
    per_layer = {"none": s * b * h * (34 + 5 * a * s / h), "selective": 34 * s * b * h, "full": 2 * s * b * h}
    if checkpointing not in per_layer:
        raise ScratchError(f"--checkpointing {checkpointing!r}: use one of {', '.join(CHECKPOINTING)}")
    return per_layer[checkpointing] * config.n_layers


@dataclass
class Plan:
    params: int
    flops_per_token: float
    gpus: int
    gpu: str
    parallel: str
    checkpointing: str
    micro_batch: int
    memory_gb: dict  # per GPU: weights, gradients, optimizer, activations, total
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


def make_plan(
    config: ModelConfig, *, gpus: str = "1xH100", parallel: str = "ddp", checkpointing: str = "none",
    micro_batch: int = 1, tokens: int | None = None, mfu: float = 0.4, price_per_gpu_hour=None,
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
    per_param = state_bytes_per_param(parallel, count)
    memory_gb = {k: v * params / 1e9 for k, v in per_param.items()}
    memory_gb["activations"] = activation_bytes(config, micro_batch, checkpointing) / 1e9
    memory_gb["total"] = sum(memory_gb.values())
    budget = memory * USABLE
    states = memory_gb["total"] - memory_gb["activations"]
    per_sample = activation_bytes(config, 1, checkpointing) / 1e9
    max_micro = max(0, math.floor((budget - states) / per_sample)) if budget > states else 0
    chinchilla = TOKENS_PER_PARAM * params
    tokens = tokens or chinchilla
    seconds = tokens * flops / (count * peak_tflops * 1e12 * mfu)
    gpu_hours = seconds / 3600 * count
    cost = gpu_hours * price_per_gpu_hour if price_per_gpu_hour is not None else None
    return Plan(params, flops, count, gpu, parallel, checkpointing, micro_batch, memory_gb,
                memory_gb["total"] <= budget, max_micro, tokens, chinchilla, seconds / 3600, gpu_hours, mfu,
                cost, source)  # fmt: skip


def format_plan(plan: Plan) -> str:
    m = plan.memory_gb
    gpu_memory = GPUS[plan.gpu][1]
    lines = [
        f"parameters        {plan.params:,} ({plan.params / 1e6:.1f}M)",
        f"FLOPs per token   {plan.flops_per_token:.3e} (training step: 6N + attention)",
        f"memory per GPU    {m['total']:.2f} GB of {gpu_memory} GB ({plan.parallel}, {plan.gpus} GPUs, "
        f"checkpointing {plan.checkpointing}, micro-batch {plan.micro_batch})",
        f"  weights         {m['weights']:.2f} GB",
        f"  gradients       {m['gradients']:.2f} GB",
        f"  Adam state      {m['optimizer']:.2f} GB",
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

"""Training throughput of the transformer: forward+backward tokens/s and model FLOPs utilization (MFU).

The peer is the machine itself: the float32 (or bf16) matrix-multiply rate is timed in the same run with
one large `torch.mm`, and MFU = tokens/s * flops_per_token / that rate (flops_per_token is the
6N + 12 * n_layers * d_model * T estimate of `Transformer.flops_per_token`, T = the sequence length used).

    python benchmarks/bench_model.py                      # llama-10m and llama-30m, ~1 minute on 2 cores
    python benchmarks/bench_model.py --presets llama-1m --batch 8 --seq 256 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from scratchlm.model import Transformer, autocast_context, get_preset, pick_device, resolve_dtype


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> float:
    """FLOP/s of an n x n x n matmul (2 n^3 FLOPs each), best of `repeats` after one warmup."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def train_step_rate(name: str, device, dtype, batch: int, seq: int, steps: int) -> dict:
    """Tokens/s of forward + backward + AdamW step on random tokens, median of `steps` after a warmup."""
    torch.manual_seed(0)
    config = get_preset(name, context_length=max(seq, get_preset(name).context_length))
    model = Transformer(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    x = torch.randint(0, config.vocab_size, (batch, seq + 1), device=device)
    inputs, targets = x[:, :-1], x[:, 1:]

    def step() -> None:
        with autocast_context(device, dtype):
            logits = model(inputs)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warmup: allocations, kernel selection
    sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]
    tokens_per_s = batch * seq / seconds
    flops = model.flops_per_token(training=True, context_length=seq)
    return dict(
        name=name,
        params=model.num_params(),
        tokens_per_s=tokens_per_s,
        flops_per_token=flops,
        achieved=tokens_per_s * flops,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["llama-10m", "llama-30m"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", help="float32, or bfloat16 autocast")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device, dtype = pick_device(args.device), resolve_dtype(args.dtype)
    print(f"device {device}, dtype {dtype}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    peak = matmul_rate(device, dtype, args.matmul_size, repeats=5)
    print(f"matmul {args.matmul_size}^3 {dtype}: {peak / 1e9:.1f} GFLOP/s (the peer: 100% MFU)")
    print(f"batch {args.batch} x seq {args.seq}, median of {args.steps} steps (forward + backward + AdamW)")
    print(f"{'preset':<12} {'params':>8} {'tokens/s':>10} {'GFLOP/s':>9} {'MFU':>6}")
    for name in args.presets:
        r = train_step_rate(name, device, dtype, args.batch, args.seq, args.steps)
        print(
            f"{r['name']:<12} {r['params'] / 1e6:>7.1f}M {r['tokens_per_s']:>10.0f} "
            f"{r['achieved'] / 1e9:>9.1f} {r['achieved'] / peak:>6.1%}"
        )


if __name__ == "__main__":
    main()

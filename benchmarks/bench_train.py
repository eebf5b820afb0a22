"""Training-loop figures: throughput and MFU of the real loop, activation-checkpointing memory, DDP scaling.

Every figure is a ratio against a peer measured in the same run:
- throughput: `pretrain()` itself (data loader, bf16/fp32 step, clip, optimizer, metrics) on Tiny
  Shakespeare with a 4096-token BPE, for the llama-10m and llama-30m presets; MFU = tokens/s x
  flops_per_token / the matrix-multiply rate timed at the start of this script, in the same precision.
- memory: one training step in a fresh process with and without activation checkpointing: the peak of
  memory in use during the step above what was in use before it (weights, grads, optimizer state), i.e.
  activations and temporaries. CUDA: the allocator's peak; CPU: glibc's bytes in use, sampled each ms.
- DDP: the shakespeare-char recipe's model for a few steps in one process (all cores) and under
  `torchrun --nproc_per_node=2` (gloo, one thread each), same global batch.

    python benchmarks/bench_train.py                 # about 2 minutes on 2 CPU cores
    python benchmarks/bench_train.py --only memory --steps 4 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import torch

from scratchlm.model import ModelConfig, Transformer, pick_device
from scratchlm.train import load_pretrain_config, pretrain
from scratchlm.train.metrics import measure_matmul_flops
from scratchlm.train.run_dir import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def loop_throughput(preset: str, batch: int, steps: int, precision: str, optim: str, out: Path) -> dict:
    """tokens/s of `pretrain` (median over logged steps after the first, which warms up) and FLOPs/token."""
    cfg = load_pretrain_config(
        None,
        [
            f"model={{preset: {preset}}}",
            "data.corpus=shakespeare",
            "data.tokenizer=bpe",
            "data.vocab_size=4096",
            f"data.batch_size={batch}",
            f"budget.max_steps={steps}",
            "eval.every=0",
            "eval.max_tokens=2048",
            "eval.sample_tokens=0",
            "logging.every=1",
            "logging.progress=false",
            f"precision={precision}",
            f"optim.name={optim}",
        ],
    )
    result = pretrain(cfg, out, say=lambda *_: None)
    train = read_metrics(result.run_dir / "metrics.jsonl", "train")[1:]
    config = ModelConfig.from_dict(json.loads((result.run_dir / "final" / "config.json").read_text()))
    return {
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in train),
        "flops_per_token": Transformer(config).flops_per_token(training=True),
        "context": config.context_length,
    }


MEMORY_PROBE = textwrap.dedent(
    """
    import ctypes, json, sys, threading, time, torch, torch.nn.functional as F
    from scratchlm.model import Transformer, get_preset
    from scratchlm.train.trainer import enable_activation_checkpointing
    from scratchlm.train.optim import OptimConfig, build_optimizer
    preset, batch, checkpointing, device = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
    config = get_preset(preset)
    model = Transformer(config).to(device)
    optimizer = build_optimizer(model, OptimConfig(name="adamw"))
    if checkpointing:
        enable_activation_checkpointing(model)
    x = torch.randint(0, config.vocab_size, (batch, config.context_length + 1), device=device)
    def step():
        logits = model(x[:, :-1])
        F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
    class MallInfo2(ctypes.Structure):  # glibc: bytes in use = uordblks (heap) + hblkhd (mmapped blocks)
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                    "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL("libc.so.6"); libc.mallinfo2.restype = MallInfo2
    def in_use():
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd
    step()  # grads and optimizer state now exist: what grows during the next step is activations
    if device == "cuda":
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
        step(); torch.cuda.synchronize(); peak = torch.cuda.max_memory_allocated()
    else:  # CPU torch has no allocator statistics: sample the C heap every millisecond during the step
        base, peak, done = in_use(), 0, False
        def sample():
            global peak
            while not done:
                peak = max(peak, in_use()); time.sleep(0.001)
        sampler = threading.Thread(target=sample); sampler.start()
        step(); done = True; sampler.join()
    print(json.dumps({"base": base, "peak": peak}))
    """
)


def memory(preset: str, batch: int, checkpointing: bool, device: str) -> dict:
    args = [preset, str(batch), "1" if checkpointing else "0", device]
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, *args], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ddp_throughput(steps: int, out: Path) -> dict:
    """tokens/s of the shakespeare-char model: one process vs torchrun with 2 processes."""
    settings = [
        "--set", f"budget.max_steps={steps}", "--set", "budget.max_time=0", "--set", "logging.every=1",
        "--set", "eval.every=0", "--set", "eval.max_tokens=2048", "--set", "eval.sample_tokens=0",
        "--set", "logging.progress=false",
    ]  # fmt: skip
    recipe = str(ROOT / "configs" / "shakespeare-char.yaml")
    base = ["-m", "scratchlm", "pretrain", "--config", recipe, *settings]
    figures = {}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    runs = {  # name: (launcher, OMP_NUM_THREADS or None for torch's default)
        "1 process, all threads": ([sys.executable], None),
        "1 process, 1 thread": ([sys.executable], "1"),
        "2 processes (DDP, gloo, 1 thread each)": (torchrun, None),  # torchrun sets 1 thread per process
    }
    for i, (name, (launcher, threads)) in enumerate(runs.items()):
        env = {**os.environ, **({"OMP_NUM_THREADS": threads} if threads else {})}
        cmd = [*launcher, *base, "--out", str(out / f"ddp{i}")]
        subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
        train = read_metrics(out / f"ddp{i}" / "metrics.jsonl", "train")[1:]
        figures[name] = statistics.median(r["tokens_per_s"] for r in train)
    return figures


def loop_overhead(steps: int, out: Path) -> dict:
    """The shakespeare-char recipe: `pretrain` against a bare step loop over the same model and batches.

    The bare loop is the peer: forward, cross-entropy, backward, optimizer step, nothing else. The
    difference is what the loop adds (schedule, finiteness check, clipping off as in the recipe, metrics,
    progress bar off). Both run in this process, interleaved, on the same prepared shards.
    """
    import time

    import torch.nn.functional as F

    from scratchlm.data import TokenLoader
    from scratchlm.model import autocast_context
    from scratchlm.train.config import resolve_model_config
    from scratchlm.train.distributed import World
    from scratchlm.train.optim import build_optimizer
    from scratchlm.train.prepare import prepare_run_data

    recipe = ROOT / "configs" / "shakespeare-char.yaml"
    settings = [f"budget.max_steps={steps}", "budget.max_time=0", "logging.every=1", "logging.progress=false",
                "eval.every=0", "eval.max_tokens=2048", "eval.sample_tokens=0"]  # fmt: skip
    cfg = load_pretrain_config(recipe, settings)
    shard_dir, tokenizer = prepare_run_data(cfg.data, out, World(), say=lambda *_: None)
    model_config = resolve_model_config(cfg.model, tokenizer.vocab_size)
    precision = "bfloat16" if cfg.precision == "bf16" else "float32"

    def run_loop(i: int) -> float:
        result = pretrain(cfg, out / f"overhead{i}", say=lambda *_: None)
        train = read_metrics(result.run_dir / "metrics.jsonl", "train")[1:]
        return statistics.median(r["tokens_per_s"] for r in train)

    def run_bare() -> float:
        torch.manual_seed(cfg.seed)
        model = Transformer(model_config)
        optimizer = build_optimizer(model, cfg.optim)
        loader = TokenLoader(shard_dir, "train", cfg.data.batch_size, model_config.context_length)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            x, y = loader.next_batch()
            with autocast_context("cpu", precision):
                logits = model(x)
            F.cross_entropy(logits.float().flatten(0, 1), y.flatten()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
        return cfg.data.batch_size * model_config.context_length / statistics.median(times[1:])

    # Interleaved, twice each: the machine's load drifts, and a drift should not pass for overhead.
    figures = {"pretrain loop": [], "bare step loop": []}
    for i in range(2):
        figures["bare step loop"].append(run_bare())
        figures["pretrain loop"].append(run_loop(i))
    return {name: statistics.mean(values) for name, values in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="training steps per throughput figure")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--only", default="overhead,throughput,memory,ddp")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    args = parser.parse_args()
    only = set(args.only.split(","))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device("auto")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load}"
    )
    out = Path(tempfile.mkdtemp(prefix="bench_train."))

    if "overhead" in only:
        figures = loop_overhead(max(10, 4 * args.steps), out)
        bare = figures["bare step loop"]
        print("\n| shakespeare-char recipe, one process | tokens/s | ratio |\n|---|---|---|")
        for name, value in figures.items():
            print(f"| {name} | {value:,.0f} | {value / bare:.2f} |")

    if "throughput" in only:
        fp32 = measure_matmul_flops(device, torch.float32, seconds=1.0)
        bf16 = measure_matmul_flops(device, torch.bfloat16, seconds=1.0)
        print(
            f"square matmul rate (the MFU denominator): fp32 {fp32 / 1e9:.1f}, bf16 {bf16 / 1e9:.1f} GFLOP/s"
        )
        print("\n| preset | batch x context | precision | optimizer | tokens/s | MFU (vs measured matmul) |")
        print("|---|---|---|---|---|---|")
        runs = [("llama-10m", 2, args.precision, "muon"), ("llama-10m", 2, args.precision, "adamw"),
                ("llama-30m", 1, args.precision, "muon")]  # fmt: skip
        for i, (preset, batch, precision, optim) in enumerate(runs):
            fig = loop_throughput(preset, batch, args.steps, precision, optim, out / f"tp{i}")
            mfu = fig["tokens_per_s"] * fig["flops_per_token"] / (bf16 if precision == "bf16" else fp32)
            print(f"| {preset} | {batch} x {fig['context']} | {precision} | {optim} | "
                  f"{fig['tokens_per_s']:,.0f} | {100 * mfu:.1f}% |")  # fmt: skip

    if "memory" in only:
        print("\n| preset | batch | activation checkpointing | peak above start of step (MiB) | ratio |")
        print("|---|---|---|---|---|")
        for preset, batch in (("llama-10m", 4), ("llama-30m", 2)):
            plain = memory(preset, batch, False, device.type)
            ckpt = memory(preset, batch, True, device.type)
            grow = {k: (v["peak"] - v["base"]) / 2**20 for k, v in (("off", plain), ("on", ckpt))}
            print(f"| {preset} | {batch} | off | {grow['off']:,.0f} | 1.00 |")
            print(f"| {preset} | {batch} | on | {grow['on']:,.0f} | {grow['on'] / grow['off']:.2f} |")

    if "ddp" in only:
        figures = ddp_throughput(max(8, 3 * args.steps), out)
        print("\n| shakespeare-char model | tokens/s | ratio |\n|---|---|---|")
        one = figures["1 process, all threads"]
        for name, value in figures.items():
            print(f"| {name} | {value:,.0f} | {value / one:.2f} |")
    print(f"\nrun folders in {out}")


if __name__ == "__main__":
    main()

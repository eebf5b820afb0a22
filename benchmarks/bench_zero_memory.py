"""What each rank holds under DDP and DeepSpeed ZeRO 1, 2 and 3, beside the planner's prediction.

    OMP_NUM_THREADS=1 python benchmarks/bench_zero_memory.py            # 4 launches of 2 CPU processes
    OMP_NUM_THREADS=1 python benchmarks/bench_zero_memory.py --modes zero3 --preset llama-10m --steps 3

The script launches itself under torchrun (2 processes, gloo, `DS_ACCELERATOR=cpu`) once per mode. Each
rank builds our `Transformer` and our AdamW (`build_optimizer`, `optim.name: adamw`) in fp32, as the
project runs DeepSpeed, wraps them as the trainer does (`parallel.parallelize` for DDP,
`scratchlm.train.zero.initialize` for ZeRO) and trains a few steps on random tokens. On the last step,
after backward and before the optimizer step (the moment weights, gradients and Adam's state, created
at the first step, are all alive), it counts the bytes of every tensor storage the rank holds, each
storage once, in the first category that reaches it:

- weights: each parameter's data (stages 1 and 2: views of DeepSpeed's flat buffer, counted whole with its
  alignment padding) and, under stage 3, its local partition `p.ds_tensor`;
- gradients: `p.grad`, and DeepSpeed's gradient partitions (`averaged_gradients`, stage 2's
  `grads_in_partition`, stage 3's `grad_partitions_flat_buffer`);
- optimizer: DeepSpeed's fp32 master partitions (`single_partition_of_fp32_groups`, stage 3's
  `fp32_partitioned_groups_flat`) and the Adam moments in the wrapped torch optimizer's state;
- buckets: gradient-reduction buffers: DeepSpeed's `ipg_buckets` (allocated bytes: `torch.empty` of
  `reduce_bucket_size` elements; stages 1 and 2 free theirs at the end of each backward, so it is counted
  just before, by wrapping the optimizer instance's `_release_ipg_buffers`), and DDP's reducer buckets,
  which live in C++ and are read from a comm hook that does what DDP's default hook does (an all-reduce
  of the bucket, divided by the world);
- other: every other tensor the garbage collector sees (RoPE tables, the batch, activations alive).

It also prints the process's peak RSS (`getrusage`) and its growth over the resident set just before the
model was built (imports, gloo and DeepSpeed's start-up excluded). The prediction is
`plan.state_bytes_per_param(mode, 2, "fp32", "adamw")` times `Transformer.num_params()`.

What the measurement shows against the planner (2 ranks, fp32, llama-10m, DeepSpeed 0.19.8, torch 2.13):
- DDP matches weights, gradients and Adam's two moments exactly; its reducer buckets hold a second copy of
  every gradient (gradient_as_bucket_view is off), 4 bytes per parameter the planner does not count.
- ZeRO 1, 2 and 3 all keep an fp32 master copy of the rank's partition although the parameters are fp32
  already, so the optimizer holds (4 + 8) / N bytes per parameter, not the planner's fp32 8 / N: 1.5x.
  Stages 1 and 2 clone `single_partition_of_fp32_groups` whatever the dtype. Stage 3 means to reuse the
  partition when the dtypes match (stage3.py, `_create_fp32_partitions`), but it compares
  `tensor.device == self.device` with `self.device` the string `current_device_name()` ('cpu', or
  'cuda:N'), and a torch.device never equals a string, so it clones too (on GPU by reading; not run).
- Gradients, after backward (accumulation 1, so reduced within it): stages 1 and 2 both hold the rank's
  partition plus the rest of every parameter that straddles the partition boundary, kept whole (stage 2's
  `grads_in_partition`, stage 1's per-parameter gradients behind `averaged_gradients`). DeepSpeed splits
  each of our optimizer groups (embed, scalar, matrix) separately; here the tied embedding (1.57M
  elements) straddles it, 3 MiB more per rank. So stage 1 holds 0.57 of the planner's whole gradients
  (it already partitions them once reduced; during backward, before the reduction, they are whole), and
  stage 2 1.14 of its 1 / N.
- Weights: stages 1 and 2 hold them whole (a flat buffer, views for the parameters), as planned. Stage 3
  keeps parameters under `stage3_param_persistence_threshold` (1e5 elements: norm gains, and at
  llama-10m the 384 x 128 k and v projections, 0.59M elements) gathered whole on every rank besides their
  partition: 1.11 of 4 / N.
- Every ZeRO stage allocates a reduce bucket of `reduce_bucket_size` = 5e8 elements (1907 MiB in fp32)
  whatever the model's size: stage 3 at start-up, for good; stages 1 and 2 in each backward, freed at its
  end. On a GPU that is real memory (set `reduce_bucket_size` lower for small models); on CPU only the
  pages written count in RSS, which is why RSS grows by far less.
- RSS is process-wide: it adds activations, the whole gradients autograd makes before DeepSpeed's hooks
  copy them into the bucket, stage 3's gathered parameters during forward and backward, the written part
  of the bucket and the allocator's slack; it does not separate the categories.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

MODES = ("ddp", "zero1", "zero2", "zero3")
MIB = 2**20
CATEGORIES = ("weights", "gradients", "optimizer", "buckets", "other")


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def census(roots: dict[str, list]) -> dict[str, int]:
    """Bytes per category; each storage counted once, in the first category (of CATEGORIES) naming it."""
    import torch

    seen: set[int] = set()
    out = {}
    for category in CATEGORIES:
        total = 0
        for t in roots.get(category, []):
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            if storage.nbytes() == 0 or storage.data_ptr() in seen:
                continue
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        out[category] = total
    return out


def flat(x) -> list:
    """The tensors in nested lists, tuples and dicts."""
    if x is None:
        return []
    if isinstance(x, dict):
        return [t for v in x.values() for t in flat(v)]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in flat(v)]
    return [x]


def worker(mode: str, preset: str, steps: int, batch: int, seq: int, out: Path) -> None:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    from scratchlm.model import get_preset
    from scratchlm.model.transformer import Transformer
    from scratchlm.plan import state_bytes_per_param
    from scratchlm.train import distributed, parallel
    from scratchlm.train.optim import OptimConfig, build_optimizer

    world = distributed.setup(torch.device("cpu"), join_alone=True)
    backend = parallel.resolve("deepspeed" if mode != "ddp" else "ddp", world)  # sets DS_ACCELERATOR
    zero = None
    if backend == "deepspeed":
        from scratchlm.train import zero
    torch.manual_seed(0)
    config = get_preset(preset, context_length=seq)
    baseline = rss_now()  # after the imports and the process group: what the model adds comes next
    model = Transformer(config)
    params = model.num_params()
    optimizer = build_optimizer(model, OptimConfig(name="adamw"))
    ddp_buckets: dict[int, torch.Tensor] = {}
    bucket_peak = [0]
    if zero is None:
        wrapped = parallel.parallelize(model, world, "ddp", bf16=False, cpu_offload=False)

        def hook(group, bucket):  # DDP's default all-reduce, remembering the bucket's buffer
            ddp_buckets[bucket.index()] = bucket.buffer()
            return default_hooks.allreduce_hook(group, bucket)

        wrapped.register_comm_hook(None, hook)
        engine, ds_opt = wrapped, None
    else:
        engine, ds_opt = zero.initialize(model, optimizer, int(mode[-1]), grad_clip=1.0)
        if hasattr(ds_opt, "_release_ipg_buffers"):  # stages 1 and 2 free their bucket at backward's end
            release = ds_opt._release_ipg_buffers

            def spy():  # count the bucket just before it goes (the instance's method, src/ untouched)
                bucket_peak[0] = max(bucket_peak[0], census({"buckets": bucket_roots(ds_opt)})["buckets"])
                release()

            ds_opt._release_ipg_buffers = spy
    gen = torch.Generator().manual_seed(0)  # the same batch on both ranks: the losses compare
    measured = {}
    for step in range(steps):
        tokens = torch.randint(config.vocab_size, (batch, seq + 1), generator=gen)
        logits = engine(tokens[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
        del logits
        if zero is None:
            loss.backward()
        else:
            zero.backward(engine, loss, last=True)
        if step == steps - 1:
            gc.collect()
            measured = census(roots(model, optimizer, ds_opt, ddp_buckets))
            measured["buckets"] = max(measured["buckets"], bucket_peak[0])
        if zero is None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            zero.step(engine)
    predicted = {k: v * params for k, v in state_bytes_per_param(mode, world.size, "fp32", "adamw").items()}
    record = {
        "mode": mode,
        "rank": world.rank,
        "params": params,
        "measured": measured,
        "predicted": predicted,
        "rss_peak": rss_peak(),
        "rss_growth": rss_peak() - baseline,
        "loss": loss.item(),
    }
    (out / f"{mode}_rank{world.rank}.json").write_text(json.dumps(record))
    dist.barrier()
    distributed.teardown(world)


def roots(model, optimizer, ds_opt, ddp_buckets) -> dict[str, list]:
    """The tensors of each category (see the module docstring), then everything gc sees as `other`."""
    import torch

    params = list(model.parameters())
    weights = [p.data for p in params] + [getattr(p, "ds_tensor", None) for p in params]
    grads = [p.grad for p in params] + [getattr(getattr(p, "ds_tensor", None), "grad", None) for p in params]
    if ds_opt is None:
        moments, masters, buckets = flat(list(optimizer.state.values())), [], list(ddp_buckets.values())
    else:
        grads += flat(getattr(ds_opt, "averaged_gradients", None))
        grads += flat(getattr(ds_opt, "grads_in_partition", None))
        grads += flat(getattr(ds_opt, "grad_partitions_flat_buffer", None))
        masters = flat(getattr(ds_opt, "single_partition_of_fp32_groups", None))
        masters += flat(getattr(ds_opt, "fp32_partitioned_groups_flat", None))
        moments = flat(list(ds_opt.optimizer.state.values()))
        buckets = bucket_roots(ds_opt)
    others = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    return {"weights": weights, "gradients": grads, "optimizer": masters + moments, "buckets": buckets,
            "other": others}  # fmt: skip


def bucket_roots(ds_opt) -> list:
    return flat([b.buffer for b in getattr(ds_opt, "ipg_buckets", {}).values()])


def launch(mode: str, args, out: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__]
    cmd += ["--worker", mode, "--preset", args.preset, "--steps", str(args.steps), "--batch", str(args.batch)]
    cmd += ["--seq", str(args.seq), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"{mode}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def table(records: list[dict]) -> str:
    def mib(x: float) -> str:
        return f"{x / MIB:.1f}"

    kinds = ("weights", "gradients", "optimizer")
    lines = [
        "| mode | rank | weights MiB (plan, ratio) | gradients MiB (plan, ratio) "
        "| optimizer MiB (plan, ratio) | buckets MiB | other MiB | states total / plan "
        "| peak RSS MiB | RSS growth MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        m, p = r["measured"], r["predicted"]
        cells = [f"{mib(m[k])} ({mib(p[k])}, {m[k] / p[k]:.2f})" for k in kinds]
        cells += [mib(m["buckets"]), mib(m["other"]), f"{sum(m[k] for k in kinds) / sum(p.values()):.2f}"]
        cells += [mib(r["rss_peak"]), mib(r["rss_growth"])]
        lines.append(f"| {r['mode']} | {r['rank']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--preset", default="llama-10m")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=128, help="context length (the preset's is shortened)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.preset, args.steps, args.batch, args.seq, args.out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for mode in args.modes.split(","):
            launch(mode, args, out)
        records = [json.loads(f.read_text()) for f in sorted(out.glob("*.json"), key=order)]
    print(f"{args.preset} ({records[0]['params']:,} parameters), fp32, AdamW, 2 CPU ranks, "
          f"{args.steps} steps of {args.batch} x {args.seq} tokens\n")  # fmt: skip
    print(table(records))
    print("\nlast loss per run (the same batches on every rank and run): "
          + ", ".join(f"{r['mode']} {r['loss']:.4f}" for r in records if r["rank"] == 0))  # fmt: skip


def order(path: Path) -> tuple[int, str]:
    mode = path.stem.split("_")[0]
    return MODES.index(mode), path.stem


if __name__ == "__main__":
    main()

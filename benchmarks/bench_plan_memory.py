"""The planner's activation memory against the peak one training fwd+bwd allocates on this CPU.

For two presets, with and without activation checkpointing, in fp32 and under bf16 autocast (the trainer's
two precisions): predicted = `plan.activation_bytes` plus autocast's bf16 weight copies; measured =
`plan.measure_activation_peak` (torch's profiler counts every allocation, so the figure is exact and does
not move with the machine's load). Korthikanti et al. 2022's GPT formula is printed beside it as the
reference it replaces for these blocks (it assumes 16-bit activations, so it is shown for bf16 only).

    OMP_NUM_THREADS=1 python benchmarks/bench_plan_memory.py        # about 2 minutes on one core
"""

from __future__ import annotations

import argparse

from scratchlm.model import get_preset
from scratchlm.plan import activation_bytes, korthikanti_activation_bytes, make_plan, measure_activation_peak

MIB = 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="llama-10m:4,llama-30m:2", help="PRESET:MICRO_BATCH,...")
    args = parser.parse_args()
    print("| preset | micro-batch x context | precision | checkpointing | predicted (MiB) | measured (MiB) "
          "| predicted / measured | Korthikanti / measured |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for item in args.sizes.split(","):
        name, batch = item.split(":")
        config, batch = get_preset(name), int(batch)
        for precision in ("fp32", "bf16-autocast"):
            copies = 1e9 * make_plan(config, precision=precision).memory_gb["autocast_copies"]
            for checkpointing in ("none", "full"):
                predicted = activation_bytes(config, batch, checkpointing, precision) + copies
                measured = measure_activation_peak(config, batch, checkpointing == "full", precision)
                reference = korthikanti_activation_bytes(config, batch, checkpointing) / measured
                print(f"| {name} | {batch} x {config.context_length} | {precision} | {checkpointing} | "
                      f"{predicted / MIB:.0f} | {measured / MIB:.0f} | {predicted / measured:.3f} | "
                      f"{f'{reference:.2f}' if precision != 'fp32' else '-'} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

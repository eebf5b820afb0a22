"""Minor page faults of a training-like allocation cycle, with and without `keep_freed_cpu_memory`.

    python benchmarks/bench_allocator.py

Each cycle allocates six 2-2.6 MB buffers, a little larger every cycle (as a step's activations are
when shapes vary), then frees them. By default glibc serves each from a fresh mmap and returns it on free,
so every cycle page-faults through all of them again; with the tuning the heap keeps and reuses them.
Each variant runs in a fresh interpreter (mallopt settings last for the process). A machine-dependent
count, hence a benchmark and not a test.
"""

from __future__ import annotations

import subprocess
import sys

_CYCLES = """
import resource, sys, torch
from scratchlm.train.allocator import keep_freed_cpu_memory
applied = keep_freed_cpu_memory() if sys.argv[1] == "keep" else None
def cycle(i):
    xs = [torch.ones(500_000 + 16_384 * i) for _ in range(6)]
    return sum(float(x[0]) for x in xs)
cycle(0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(1, 11):
    cycle(i)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _CYCLES, mode], capture_output=True, text=True, check=True)
    applied, count = out.stdout.split()
    return applied, int(count)


def main() -> None:
    applied, kept = faults("keep")
    _, default = faults("default")
    print(f"glibc default: {default:,} minor page faults over 10 cycles")
    print(f"kept (applied={applied}): {kept:,}  ->  {default / max(1, kept):.1f}x fewer")


if __name__ == "__main__":
    main()

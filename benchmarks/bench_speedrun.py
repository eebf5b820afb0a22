"""The speedrun's goals (issue 19): wall time end to end, exact resume after SIGKILLs, reproducibility.

    python benchmarks/bench_speedrun.py time --preset laptop --out /tmp/sr-laptop     # goal 1: <= 30 min
    python benchmarks/bench_speedrun.py resume --preset tiny --kills 5 --work /tmp/sr-resume   # goal 3
    python benchmarks/bench_speedrun.py repro --preset tiny --work /tmp/sr-repro       # goal 4

`time` runs the preset once and prints each stage's wall time against the goal. `resume` runs the preset
once uninterrupted, then again with SIGKILL at `--kills` random moments (drawn uniformly over the first
run's wall time, so they fall across the stages) and `--resume` after each, and compares the two
report.json files with every wall-clock figure set aside, at one thread. `repro` runs it twice from
scratch and compares the same way. Run one benchmark at a time on the 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from scratchlm.speedrun.card import without_wall


def command(preset: str, out: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "scratchlm", "speedrun", "--preset", preset, "--out", str(out), *extra]


def run(preset: str, out: Path, extra: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command(preset, out, extra), env=env, check=True)
    return time.perf_counter() - start


def differences(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += differences(a.get(k), b.get(k), f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def card(out: Path) -> dict:
    return without_wall(json.loads((out / "report.json").read_text()))


def cmd_time(args, env) -> None:
    total = run(args.preset, args.out, args.extra, env)
    report = json.loads((args.out / "report.json").read_text())
    print(f"\n{args.preset}: {total / 60:.1f} minutes end to end (goal for laptop: <= 30)")
    for stage, row in report["stages"].items():
        print(f"  {stage:<12} {row['wall_s']:8.1f} s")
    base = report["base"]
    print(f"  base: val bpb {base['val_bpb']:.4f}, BLiMP {base.get('blimp', float('nan')):.3f}")
    for name, row in report.get("alignment", {}).get("methods", {}).items():
        gain = f" gain {row['gain']:+.3f} +- {row['gain_se']:.3f}" if "gain" in row else ""
        print(f"  {name:<12} gold {row['gold']:+.3f} +- {row['gold_se']:.3f}{gain}, KL {row['kl']:.2f}")


def cmd_resume(args, env) -> None:
    env = {**env, "OMP_NUM_THREADS": "1"}
    reference, killed = args.work / "uninterrupted", args.work / "killed"
    wall = run(args.preset, reference, args.extra, env)
    rng = random.Random(args.seed)
    moments = sorted(rng.uniform(0.02, 0.98) * wall for _ in range(args.kills))
    print(
        f"uninterrupted: {wall:.0f} s; SIGKILL after {', '.join(f'{m:.0f}' for m in moments)} s of run time"
    )
    spent, first = 0.0, True
    for moment in moments:
        proc = subprocess.Popen(command(args.preset, killed, args.extra + ([] if first else ["--resume"])),
                                env=env, stdout=subprocess.DEVNULL)  # fmt: skip
        first = False
        try:
            proc.wait(timeout=max(0.5, moment - spent))
            print(f"  the run ended before {moment:.0f} s")
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            stages = sorted(p.parent.name for p in killed.glob("*/stage.json"))
            print(f"  killed at {moment:.0f} s (done: {', '.join(stages) or 'none'})")
        spent = moment
    run(args.preset, killed, args.extra + ["--resume"], env)
    diff = differences(card(reference), card(killed))
    print("report.json equal to the uninterrupted run's (wall times aside):", not diff)
    for line in diff[:20]:
        print("  ", line)


def cmd_repro(args, env) -> None:
    a, b = args.work / "a", args.work / "b"
    run(args.preset, a, args.extra, env)
    run(args.preset, b, args.extra, env)
    diff = differences(card(a), card(b))
    print("two runs, one seed: report.json equal (wall times aside):", not diff)
    for line in diff[:20]:
        print("  ", line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("time", "resume", "repro"))
    parser.add_argument("--preset", default="laptop")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-speedrun/run"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-speedrun"))
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("extra", nargs="*", help="more speedrun arguments, after --")
    args = parser.parse_args()
    env = dict(os.environ)
    {"time": cmd_time, "resume": cmd_resume, "repro": cmd_repro}[args.what](args, env)


if __name__ == "__main__":
    main()

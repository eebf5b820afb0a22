"""BPE training and encoding, measured against Hugging Face `tokenizers` in the same run.

    python benchmarks/bench_tokenizer.py            # Tiny Shakespeare @4096 and pystdlib @32768
    python benchmarks/bench_tokenizer.py --quick    # pystdlib capped at 8 MB of training text

For each corpus: training time of ours (pure Python, incremental) and of `tokenizers` (Rust, BpeTrainer
with the ByteLevel pre-tokenizer), same training split, same vocabulary size (256 bytes + merges + the
same number of special tokens); the peak resident memory of each training process (each runs in its
own subprocess, so one does not inherit the other's peak); and compression, bytes per token on the
validation split. Ours is trained twice: with GPT-2's split pattern (the rules of `tokenizers`'
ByteLevel pre-tokenizer, so compression compares like with like) and with our default GPT-4 pattern.
Then encoding throughput of our tiktoken path against the pure-Python reference encoder.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

# Like the tests: the shared corpus mirror beside the checkout, unless the user points elsewhere.
_MIRROR = Path(__file__).resolve().parents[2] / "shared" / "data"
if "SCRATCHLM_DATA" not in os.environ and _MIRROR.is_dir():
    os.environ["SCRATCHLM_DATA"] = str(_MIRROR)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _split(corpus: str, cap_mb: float) -> tuple[list[str], list[str]]:
    from scratchlm.data.corpora import load_corpus

    train, val = load_corpus(corpus).split()
    if cap_mb:  # keep whole documents, in order, up to the cap
        kept, size = [], 0
        for doc in train:
            if size >= cap_mb * 1e6:
                break
            kept.append(doc)
            size += len(doc)
        train = kept
    return train, val


def worker(args: argparse.Namespace) -> None:
    """One training in this process; prints one JSON line."""
    from scratchlm.tokenizer import DEFAULT_SPECIAL_TOKENS, GPT2_PATTERN, GPT4_PATTERN, train_bpe

    train, val = _split(args.corpus, args.cap_mb)
    val_bytes = sum(len(d.encode("utf-8")) for d in val)
    rss_before = _rss_mb()
    if args.worker == "ours":
        pattern = GPT2_PATTERN if args.pattern == "gpt2" else GPT4_PATTERN
        start = time.perf_counter()
        tok = train_bpe(train, args.vocab, pattern=pattern, workers=args.workers)
        seconds = time.perf_counter() - start
        val_tokens = sum(len(ids) for ids in tok.encode_batch(val, ordinary=True))
        vocab = tok.vocab_size
    else:
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers

        start = time.perf_counter()
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(
            vocab_size=args.vocab,
            special_tokens=list(DEFAULT_SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(train, trainer)
        seconds = time.perf_counter() - start
        val_tokens = sum(len(e.ids) for e in tok.encode_batch(val))
        vocab = tok.get_vocab_size()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "vocab": vocab,
                "train_mb": sum(len(d) for d in train) / 1e6,
                "bytes_per_token": val_bytes / val_tokens,
                "rss_before_mb": rss_before,
                "peak_mb": _peak_mb(),
            }
        )
    )


def _run_once(kind: str, corpus: str, vocab: int, pattern: str, cap_mb: float, workers: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--corpus", corpus, "--vocab", str(vocab)]
    cmd += ["--pattern", pattern, "--cap-mb", str(cap_mb), "--workers", str(workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{kind} training failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _row(name: str, result: dict, ratio: float) -> str:
    return (
        f"{name:<30} {result['seconds']:>9.2f} {ratio:>8.2f}x {result['bytes_per_token']:>14.4f} "
        f"{result['peak_mb']:>12.0f}"
    )


def bench_training(corpus: str, vocab: int, cap_mb: float, workers: int, repeat: int) -> None:
    # Round-robin repeats, keeping each contender's fastest run: the machine is shared, and the minimum
    # is the least disturbed measurement; interleaving spreads slow phases of the load over all three.
    contenders = [("hf", "gpt2"), ("ours", "gpt2"), ("ours", "gpt4")]
    best: dict[tuple[str, str], dict] = {}
    for _ in range(repeat):
        for kind, pattern in contenders:
            run = _run_once(kind, corpus, vocab, pattern, cap_mb, workers)
            if (kind, pattern) not in best or run["seconds"] < best[kind, pattern]["seconds"]:
                best[kind, pattern] = run
    hf = best["hf", "gpt2"]
    print(f"\n== {corpus} (train split {hf['train_mb']:.2f} MB), vocab {vocab}, best of {repeat} ==")
    print(f"{'':<30} {'train s':>9} {'vs HF':>9} {'val bytes/tok':>14} {'peak RSS MB':>12}")
    print(_row("tokenizers (Rust, ByteLevel)", hf, 1.0))
    for pattern in ("gpt2", "gpt4"):
        ours = best["ours", pattern]
        assert ours["vocab"] == hf["vocab"] == vocab, (ours["vocab"], hf["vocab"])
        ratio = ours["seconds"] / hf["seconds"]
        compression = ours["bytes_per_token"] / hf["bytes_per_token"] - 1
        print(_row(f"scratchlm ({pattern} pattern)", ours, ratio))
        print(
            f"   time ratio {ratio:.2f} (goal <= 2), compression {compression:+.2%} vs tokenizers "
            f"(goal within 2%), RSS before training {ours['rss_before_mb']:.0f} MB"
        )


def bench_encoding() -> None:
    from scratchlm.tokenizer import train_bpe

    train, val = _split("shakespeare", 0)
    tok = train_bpe(train, 4096)
    text = val[0]
    mb = len(text.encode("utf-8")) / 1e6
    timings = {}
    for name, fn in (("tiktoken", tok.encode), ("reference", tok.encode_reference)):
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            ids = fn(text)
            best = min(best, time.perf_counter() - start)
        timings[name] = best
        assert ids == tok.encode(text)
    print(f"\n== encoding the Shakespeare validation split ({mb:.3f} MB), vocab 4096, best of 3 ==")
    for name, seconds in timings.items():
        print(f"{name:<10} {mb / seconds:8.2f} MB/s")
    print(f"tiktoken / reference speed ratio: {timings['reference'] / timings['tiktoken']:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="cap the pystdlib training text at 8 MB")
    parser.add_argument("--skip-stdlib", action="store_true", help="only Tiny Shakespeare")
    parser.add_argument("--workers", type=int, default=1, help="our pre-tokenization processes")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the fastest is kept")
    parser.add_argument("--worker", choices=["ours", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--pattern", default="gpt4", help=argparse.SUPPRESS)
    parser.add_argument("--cap-mb", type=float, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    bench_training("shakespeare", 4096, 0, args.workers, args.repeat)
    if not args.skip_stdlib:
        bench_training(
            "pystdlib", 32768, 8 if args.quick else 0, args.workers, 1 if args.quick else args.repeat
        )
    bench_encoding()


if __name__ == "__main__":
    main()

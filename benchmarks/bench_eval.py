"""Evaluation throughput: `evaluate_text` tokens/s against a bare forward pass over the same windows.

    python benchmarks/bench_eval.py                     # llama-10m, 16k characters of Tiny Shakespeare
    python benchmarks/bench_eval.py --tokens 4096 --stride 256

The model is the preset with random weights (speed does not depend on what they learned) and a character
tokenizer (one token per character, so no tokenizer speed enters the figure). The peer, timed in the same
run on the same text, is the least work that can score it: the model's forward on (batch, context)
windows plus `cross_entropy`, no bookkeeping. The ratio ours/peer is what windowing, padding, per-row
log-softmax and Python cost. A sliding window (`--stride`) is reported too: it scores each token once but
runs `context / stride` times as many forward passes.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from scratchlm.eval.lm import evaluate_text
from scratchlm.eval.scoring import autocast_for
from scratchlm.model import Transformer, get_preset, pick_device
from scratchlm.tokenizer import ENDOFTEXT, train_char


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of_alternating(repeats: int, fns: list, device) -> list[float]:
    """Fastest of `repeats` timed calls of each function (seconds), the functions taking turns: on a
    shared box the load drifts, and turns expose each to the same drift, the minimum to the least."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            best[i] = min(best[i], time.perf_counter() - start)
    return best


@torch.inference_mode()
def bare_forward(model, ids: torch.Tensor, context: int, batch_size: int) -> float:
    """Total NLL of `ids` in consecutive windows: forward + cross_entropy, nothing else."""
    device = next(model.parameters()).device
    n = (len(ids) - 1) // context * context
    inputs = ids[:n].view(-1, context)  # (W, T)
    targets = ids[1 : n + 1].view(-1, context)  # (W, T)
    total = 0.0
    for start in range(0, len(inputs), batch_size):
        x, y = inputs[start : start + batch_size].to(device), targets[start : start + batch_size].to(device)
        with autocast_for(device):
            logits = model(x)  # (B, T, V)
        total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="llama-10m")
    parser.add_argument("--tokens", type=int, default=16384, help="characters of text to score")
    parser.add_argument("--stride", type=int, default=0, help="also time a sliding window (0: context / 4)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed runs of each; best")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    torch.manual_seed(0)
    model = Transformer(get_preset(args.preset)).to(device).eval()
    context = model.config.context_length
    text = open(
        os.path.join(os.environ.get("SCRATCHLM_DATA", "../shared/data"), "tinyshakespeare.txt")
    ).read()
    text = text[-args.tokens :]  # the validation end of the file
    tokenizer = train_char(text, special_tokens=(ENDOFTEXT,))
    ids = torch.tensor([tokenizer.eot_id, *tokenizer.encode_ordinary(text)])
    stride = args.stride or context // 4

    print(f"{args.preset} ({model.num_params() / 1e6:.1f}M params, context {context}) on {device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, {len(text)} tokens")  # fmt: skip
    evaluate_text(model, tokenizer, text[: context * 2], batch_size=args.batch_size)  # warm-up
    peer, ours = best_of_alternating(
        args.repeats,
        [
            lambda: bare_forward(model, ids, context, args.batch_size),
            lambda: evaluate_text(model, tokenizer, text, batch_size=args.batch_size),
        ],
        device,
    )
    (sliding,) = best_of_alternating(
        1, [lambda: evaluate_text(model, tokenizer, text, stride=stride, batch_size=args.batch_size)], device
    )
    peer_rate = (len(ids) - 1) // context * context / peer
    ours_rate, sliding_rate = len(text) / ours, len(text) / sliding
    print(f"bare forward + cross_entropy : {peer_rate:10,.0f} tokens/s")
    print(
        f"evaluate_text (windows)      : {ours_rate:10,.0f} tokens/s  ours/peer {ours_rate / peer_rate:.2f}"
    )
    print(
        f"evaluate_text (stride {stride:4d})  : {sliding_rate:10,.0f} tokens/s  ({context // stride}x passes)"
    )


if __name__ == "__main__":
    main()

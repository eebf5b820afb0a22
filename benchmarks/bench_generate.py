"""Generation speed at batch 1: our KV-cache decoding vs full recompute vs transformers' `generate`.

    python benchmarks/bench_generate.py                     # llama-10m, 512 new tokens, greedy
    python benchmarks/bench_generate.py --new-tokens 128    # quicker
    python benchmarks/bench_generate.py --dtype bfloat16    # both sides in bf16, and bf16's quality

The model is the preset with random weights (speed does not depend on what they learned), its context set
to `--context` (1024), widened if prompt + new tokens need more (RoPE has no weights tied to the context,
so the architecture is unchanged). The same weights are exported with `scratchlm.interop.hf` and run
through `LlamaForCausalLM.generate(do_sample=False, use_cache=True)` in the same process; both must give the
same tokens. Ours is timed twice: as `generate_ids` runs by default (one-token steps through the packed
decoder, `scratchlm.generate.packed`) and with `packed=False` (the model's own forward with the cache, the
path before it). Goals (issues 3, 13): cache >= 5x no-cache, ours >= 1.5x transformers.

With a dtype other than float32, its quality against float32 is printed too: the greedy ids against the
float32 model's, and, teacher-forced on the float32 ids, the largest logit difference and how often the
two pick the same next token.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

import torch

from scratchlm.generate import SamplingConfig, generate_ids
from scratchlm.interop.hf import export_hf
from scratchlm.model import Transformer, get_preset, pick_device, resolve_dtype


def timed(fn):
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="llama-10m")
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--prompt-tokens", type=int, default=8)
    parser.add_argument("--context", type=int, default=1024, help="the model's context length")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", help="float32 or bfloat16 (weights cast, both models)")
    parser.add_argument("--no-recompute", action="store_true", help="skip the slow no-cache run")
    parser.add_argument("--no-hf", action="store_true", help="skip transformers")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed runs of ours and HF; best")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared box)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device, dtype = pick_device(args.device), resolve_dtype(args.dtype)
    config = get_preset(args.preset)
    config = config.replace(context_length=max(args.context, args.prompt_tokens + args.new_tokens))
    torch.manual_seed(0)
    model = Transformer(config).eval()
    prompt = torch.randint(0, config.vocab_size, (args.prompt_tokens,)).tolist()
    sampling = SamplingConfig(max_new_tokens=args.new_tokens, temperature=0, stop_at_eot=False)
    print(
        f"{args.preset}: {model.num_params() / 1e6:.1f}M params, device {device}, {dtype}, "
        f"threads {torch.get_num_threads()}, prompt {len(prompt)} tokens, {args.new_tokens} new, greedy, "
        f"context {config.context_length}"
    )
    reference = model if dtype == torch.float32 else copy.deepcopy(model)  # float32, for the quality

    hf_dir = None
    if not args.no_hf:  # export before moving to the device: the exporter writes float32 from the CPU copy
        hf_dir = tempfile.mkdtemp(prefix="bench-generate-hf-")
        export_hf(model, f"{hf_dir}/model")
    model = model.to(device=device, dtype=dtype)

    warm = SamplingConfig(max_new_tokens=8, temperature=0, stop_at_eot=False)
    generate_ids(model, [prompt], warm)
    run_ours = lambda: generate_ids(model, [prompt], sampling)[0]  # noqa: E731
    run_forward = lambda: generate_ids(model, [prompt], sampling, packed=False)[0]  # noqa: E731
    run_hf = None
    if hf_dir is not None:
        from transformers import LlamaForCausalLM

        hf = LlamaForCausalLM.from_pretrained(f"{hf_dir}/model", local_files_only=True, dtype=dtype)
        hf = hf.to(device).eval()
        ids = torch.tensor([prompt], device=device)
        kwargs = dict(do_sample=False, use_cache=True, eos_token_id=None, pad_token_id=0)

        def run_hf(n=args.new_tokens):
            with torch.no_grad():
                out = hf.generate(ids, max_new_tokens=n, min_new_tokens=n, **kwargs)
            return out[0, len(prompt) :].tolist()

        run_hf(8)

    # Alternate the two, best of `repeats` each: on a shared machine load comes and goes, and alternating
    # exposes both to the same conditions.
    t_cache = t_forward = t_hf = float("inf")
    for _ in range(args.repeats):
        ours, t = timed(run_ours)
        t_cache = min(t_cache, t)
        before, t = timed(run_forward)
        t_forward = min(t_forward, t)
        if run_hf is not None:
            theirs, t = timed(run_hf)
            t_hf = min(t_hf, t)
    rate_cache, rate_forward = len(ours) / t_cache, len(before) / t_forward
    print(f"scratchlm, KV cache:       {rate_cache:8.1f} tokens/s  ({t_cache:.2f} s)")
    print(
        f"  model forward (packed=False): {rate_forward:.1f} tokens/s, "
        f"packed {rate_cache / rate_forward:.2f}x; same tokens: {before == ours}"
    )
    if run_hf is not None:
        rate_hf = len(theirs) / t_hf
        same = theirs == ours
        first_diff = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
        print(f"transformers generate:     {rate_hf:8.1f} tokens/s  ({t_hf:.2f} s)")
        print(
            f"ours / transformers: {rate_cache / rate_hf:.2f}x (goal >= 1.5x); same tokens: {same}"
            + ("" if same else f" (first difference at new token {first_diff})")
        )

    if not args.no_recompute:
        slow, t_slow = timed(lambda: generate_ids(model, [prompt], sampling, use_cache=False)[0])
        rate_slow = len(slow) / t_slow
        print(f"scratchlm, full recompute: {rate_slow:8.1f} tokens/s  ({t_slow:.2f} s)")
        print(f"cache speed-up: {rate_cache / rate_slow:.1f}x (goal >= 5x); same tokens: {slow == ours}")

    if dtype != torch.float32:
        print_quality(reference, model, prompt, ours, sampling)


@torch.inference_mode()
def print_quality(reference, model, prompt, ours, sampling) -> None:
    """`model` (another dtype) against `reference` (float32): greedy ids, and teacher-forced logits."""
    exact = generate_ids(reference, [prompt], sampling)[0]
    agree = next((i for i, (a, b) in enumerate(zip(ours, exact)) if a != b), len(exact))
    ids = torch.tensor([prompt + exact[:-1]], device=next(reference.parameters()).device)
    want = reference(ids)[0, len(prompt) - 1 :].float()  # (N, V): the logits that chose each float32 id
    got = model(ids.to(next(model.parameters()).device))[0, len(prompt) - 1 :].float().to(want.device)
    top1 = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
    print(
        f"quality vs float32: greedy ids equal for the first {agree} of {len(exact)}; teacher-forced on the "
        f"float32 ids, max |logit diff| {(got - want).abs().max().item():.3g} "
        f"(logits' std {want.std().item():.3g}), same next token {top1:.1%}"
    )


if __name__ == "__main__":
    main()

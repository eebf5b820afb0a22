"""`scratchlm generate`, `scratchlm export hf|model`, `scratchlm import hf`: thin wrappers over
`scratchlm.generate` and `scratchlm.interop.hf`.

scratchlm generate --ckpt runs/demo --prompt "ROMEO:" --max-new-tokens 200 --top-k 50 --seed 1
scratchlm generate --ckpt runs/demo --prompt "To be" --prompt "Once" --temperature 0 --stop "\\n\\n"
scratchlm export hf --ckpt runs/demo/final --out demo-hf
scratchlm export model --from-dcp runs/fsdp/checkpoints/step_400 --out fsdp-model
scratchlm import hf --src demo-hf --out demo-back
"""

from __future__ import annotations

import sys
from pathlib import Path

from scratchlm.cli import unescape
from scratchlm.cli.derive import add_dataclass_arguments, add_device_arguments, dataclass_from_args
from scratchlm.errors import ScratchError


def register(subparsers) -> None:
    g = subparsers.add_parser(
        "generate",
        help="sample text from a model folder (streams to the terminal)",
        description="Continue prompts with a saved model: greedy or sampled, streamed as it comes.",
    )
    g.add_argument("--ckpt", required=True, help="model folder, or a run folder (uses final/ or its newest)")
    g.add_argument(
        "--prompt",
        action="append",
        metavar="TEXT",
        help="a prompt; repeat for a batch (default: stdin if piped, else start from <|endoftext|>)",
    )
    # The sampling flags come from SamplingConfig's fields (name, type, default, help), written once there.
    from scratchlm.generate.config import SamplingConfig

    add_dataclass_arguments(g, SamplingConfig, skip=("stop_at_eot",), value_types={"stop": unescape})
    # Kept as the one flag people know: it reads better than --no-stop-at-eot.
    g.add_argument(
        "--ignore-eot", dest="stop_at_eot", action="store_false", help="do not stop at <|endoftext|>"
    )
    g.add_argument("--no-stream", action="store_true", help="print each text when complete")
    add_device_arguments(g)
    g.set_defaults(func=run_generate)

    export = subparsers.add_parser("export", help="write a model in another ecosystem's format")
    export_sub = export.add_subparsers(dest="format", metavar="FORMAT", required=True)
    e = export_sub.add_parser("hf", help="a Hugging Face LlamaForCausalLM folder (config.json + safetensors)")
    e.add_argument("--ckpt", required=True, help="model folder, or a run folder (uses final/ or its newest)")
    e.add_argument("--out", required=True, help="the Hugging Face folder to write (replaced if present)")
    e.set_defaults(func=run_export_hf)
    m = export_sub.add_parser("model", help="a model folder from an FSDP run's distributed checkpoint")
    m.add_argument("--from-dcp", required=True, metavar="STEP_DIR", help="an FSDP run's checkpoints/step_N")
    m.add_argument("--out", required=True, help="the model folder to write (replaced if present)")
    m.set_defaults(func=run_export_model)

    imp = subparsers.add_parser("import", help="read a model from another ecosystem's format")
    imp_sub = imp.add_subparsers(dest="format", metavar="FORMAT", required=True)
    i = imp_sub.add_parser("hf", help="a Hugging Face Llama folder -> a scratchlm model folder")
    i.add_argument("--src", required=True, help="Hugging Face folder with config.json and model.safetensors")
    i.add_argument("--out", required=True, help="the scratchlm model folder to write")
    i.add_argument(
        "--tokenizer", help="scratchlm tokenizer folder (default: SRC/tokenizer, as export writes)"
    )
    i.set_defaults(func=run_import_hf)


def _prompts(args) -> list[str]:
    if args.prompt:
        return args.prompt
    if not sys.stdin.isatty():
        return [sys.stdin.read()]
    return [""]


def run_generate(args) -> int:
    import torch

    from scratchlm.eval.checkpoint import load_checkpoint
    from scratchlm.generate import SamplingConfig, generate, generate_stream

    config = dataclass_from_args(SamplingConfig, args)
    model, tokenizer, _ = load_checkpoint(args.ckpt, device=args.device, dtype=args.dtype)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    prompts = _prompts(args)
    out = sys.stdout
    if len(prompts) == 1 and not args.no_stream:
        out.write(prompts[0])
        out.flush()

        for step in generate_stream(model, tokenizer, prompts, config):
            if step.texts[0]:
                out.write(step.texts[0])
                out.flush()
        out.write("\n")
        return 0
    texts = generate(model, tokenizer, prompts, config)
    for k, (prompt, text) in enumerate(zip(prompts, texts)):
        if k:
            out.write("\n---\n")
        out.write(prompt + text)
    out.write("\n")
    return 0


def run_export_hf(args) -> int:
    from scratchlm.interop.hf import export_hf
    from scratchlm.model.folder import load_model
    from scratchlm.train.run_dir import resolve_model_dir

    model, tokenizer, _ = load_model(resolve_model_dir(args.ckpt))
    out = export_hf(model, args.out, tokenizer)
    hf_tok = (
        " + tokenizer.json" if (Path(out) / "tokenizer.json").is_file() else " (no HF tokenizer: not BPE)"
    )
    print(f"wrote {out} (LlamaForCausalLM: config.json, model.safetensors, tokenizer/{hf_tok})")
    return 0


def run_export_model(args) -> int:
    from scratchlm.train.sharded_checkpoint import export_model

    out = export_model(args.from_dcp, args.out)
    print(f"wrote {out} (a model folder, from the distributed checkpoint {args.from_dcp})")
    return 0


def run_import_hf(args) -> int:
    from scratchlm.interop.hf import import_hf
    from scratchlm.model.folder import save_model
    from scratchlm.tokenizer import load_tokenizer

    model, tokenizer = import_hf(args.src)
    if args.tokenizer:
        tokenizer = load_tokenizer(args.tokenizer)
    if tokenizer is None:
        raise ScratchError(
            f"{args.src} has no scratchlm tokenizer/ folder; pass --tokenizer DIR with the tokenizer to use"
        )
    out = save_model(args.out, model, tokenizer, extra={"imported_from": str(Path(args.src).resolve())})
    print(f"wrote {out} ({model.num_params():,} parameters)")
    return 0

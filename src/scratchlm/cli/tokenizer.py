"""`scratchlm tokenizer train|encode|decode|info|import-gpt2`: a thin layer over scratchlm.tokenizer."""

from __future__ import annotations

import argparse
import json
import sys
import time

from scratchlm.errors import ScratchError
from scratchlm.tokenizer import (
    DEFAULT_SPECIAL_TOKENS,
    GPT4_PATTERN,
    load_gpt2,
    load_tokenizer,
    train_bpe,
    train_char,
)


def register(subparsers) -> None:
    parser = subparsers.add_parser("tokenizer", help="train, inspect and use tokenizers")
    sub = parser.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)

    train = sub.add_parser("train", help="train a tokenizer on a corpus's training split")
    train.add_argument(
        "--corpus", required=True, help="registry name (shakespeare, pystdlib), file or folder"
    )
    train.add_argument("--kind", choices=["bpe", "char"], default="bpe")
    train.add_argument("--vocab-size", type=int, help="total ids, specials included (bpe only)")
    train.add_argument("--out", required=True, help="folder to save the tokenizer to")
    train.add_argument(
        "--pattern", default=GPT4_PATTERN, help="pre-tokenization regex (bpe; default GPT-4's)"
    )
    train.add_argument(
        "--special",
        action="append",
        help=f"a special token (repeatable; bpe default: {' '.join(DEFAULT_SPECIAL_TOKENS)}; char: none)",
    )
    train.add_argument("--unknown", help="char only: special token that unknown characters map to")
    train.add_argument("--workers", type=int, default=1, help="processes for pre-tokenizing a large corpus")
    train.add_argument("--json", action="store_true", help="print the result as JSON")
    train.set_defaults(func=cmd_train)

    encode = sub.add_parser("encode", help="print the token ids of a text")
    encode.add_argument("--tokenizer", required=True, help="a saved tokenizer folder")
    encode.add_argument("--json", action="store_true", help="print ids and counts as JSON")
    encode.add_argument("text", help="the text, or - to read standard input")
    encode.set_defaults(func=cmd_encode)

    decode = sub.add_parser("decode", help="print the text of token ids")
    decode.add_argument("--tokenizer", required=True, help="a saved tokenizer folder")
    decode.add_argument("ids", nargs="+", help="token ids")
    decode.set_defaults(func=cmd_decode)

    info = sub.add_parser("info", help="describe a saved tokenizer")
    info.add_argument("--tokenizer", required=True, help="a saved tokenizer folder")
    info.add_argument("--json", action="store_true", help="print as JSON")
    info.set_defaults(func=cmd_info)

    gpt2 = sub.add_parser("import-gpt2", help="save GPT-2's published vocabulary as a tokenizer folder")
    gpt2.add_argument(
        "path", help="folder with encoder.json + vocab.bpe (or gpt2.tiktoken), or a .tiktoken file"
    )
    gpt2.add_argument("--out", required=True, help="folder to save the tokenizer to")
    gpt2.set_defaults(func=cmd_import_gpt2)


def _load_train_split(spec: str) -> list[str]:
    # Imported here so the tokenizer commands do not depend on the data stage until they need it.
    try:
        from scratchlm.data import load_corpus
    except ImportError:
        from scratchlm.data.corpora import load_corpus
    train_docs, _ = load_corpus(spec).split()
    return train_docs


def cmd_train(args: argparse.Namespace) -> int:
    if args.kind == "bpe" and args.vocab_size is None:
        raise ScratchError("--vocab-size is required for --kind bpe (e.g. --vocab-size 4096)")
    if args.kind == "char" and args.vocab_size is not None:
        raise ScratchError(
            "--vocab-size does not apply to --kind char (its vocabulary is the text's characters)"
        )
    if args.kind == "bpe" and args.unknown:
        raise ScratchError("--unknown applies to --kind char only (byte-level BPE has no unknown characters)")
    docs = _load_train_split(args.corpus)
    start = time.perf_counter()
    if args.kind == "bpe":
        specials = args.special if args.special is not None else DEFAULT_SPECIAL_TOKENS
        tok = train_bpe(
            docs, args.vocab_size, pattern=args.pattern, special_tokens=specials, workers=args.workers
        )
        merges = tok.num_merges
    else:
        tok = train_char(docs, special_tokens=args.special or (), unknown=args.unknown)
        merges = 0
    seconds = time.perf_counter() - start
    tok.save(args.out)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    n_tokens = sum(len(tok.encode_ordinary(d)) for d in docs)
    result = {
        "kind": tok.kind,
        "vocab_size": tok.vocab_size,
        "merges": merges,
        "seconds": round(seconds, 3),
        "bytes_per_token": round(n_bytes / max(1, n_tokens), 4),
        "out": str(args.out),
        "fingerprint": tok.fingerprint(),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"trained {tok.kind} tokenizer: vocab {tok.vocab_size}, {merges} merges, {seconds:.2f} s, "
            f"{result['bytes_per_token']} bytes/token on the training text -> {args.out}"
        )
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    tok = load_tokenizer(args.tokenizer)
    text = sys.stdin.read() if args.text == "-" else args.text
    ids = tok.encode(text)
    if args.json:
        print(json.dumps({"ids": ids, "tokens": len(ids), "bytes": len(text.encode("utf-8"))}))
    else:
        print(" ".join(map(str, ids)))
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    tok = load_tokenizer(args.tokenizer)
    try:
        ids = [int(x) for x in args.ids]
    except ValueError:
        bad = next(x for x in args.ids if not x.lstrip("-").isdigit())
        raise ScratchError(
            f"token id {bad!r} is not an integer; give ids like: decode --tokenizer DIR 15496 995"
        ) from None
    sys.stdout.write(tok.decode(ids) + "\n")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    tok = load_tokenizer(args.tokenizer)
    info = {
        "kind": tok.kind,
        "vocab_size": tok.vocab_size,
        "merges": getattr(tok, "num_merges", 0),
        "special_tokens": tok.special_tokens,
        "eot_id": tok.eot_id,
        "pattern": getattr(tok, "pattern", None),
        "fingerprint": tok.fingerprint(),
    }
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            if value is not None:
                print(f"{key}: {value}")
    return 0


def cmd_import_gpt2(args: argparse.Namespace) -> int:
    tok = load_gpt2(args.path)
    tok.save(args.out)
    print(f"saved GPT-2's tokenizer (vocab {tok.vocab_size}) -> {args.out}")
    return 0

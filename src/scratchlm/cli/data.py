"""`scratchlm data list|fetch` and `scratchlm prepare`: thin wrappers over `scratchlm.data`."""

from __future__ import annotations

import argparse
import json

from scratchlm.data import REGISTRY, corpus_names, fetch, locate, prepare
from scratchlm.data.shards import DEFAULT_SHARD_TOKENS


def _list(args: argparse.Namespace) -> int:
    rows = []
    for name in corpus_names():
        entry = REGISTRY[name]
        path, where = locate(name)
        rows.append(
            {
                "name": name,
                "where": where,
                "path": str(path) if path else None,
                "description": entry.description,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        status = (
            f"{r['where']}: {r['path']}"
            if r["path"]
            else "not local: set SCRATCHLM_DATA to a mirror holding it"
            if r["where"] == "missing"
            else "not local yet (scratchlm data fetch downloads it)"
        )
        print(f"{r['name']:<{width}}  {r['description']}\n{'':<{width}}  {status}")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    print(fetch(args.name))
    return 0


def _prepare(args: argparse.Namespace) -> int:
    manifest = prepare(
        args.corpus,
        args.tokenizer,
        args.out,
        shard_tokens=args.shard_tokens,
        val_fraction=args.val_fraction,
        workers=args.workers,
        glob=args.glob,
        jsonl_field=args.jsonl_field,
        errors=args.errors,
        progress=not args.json,
    )
    splits = {
        name: {k: s[k] for k in ("tokens", "documents", "bytes")} | {"shards": len(s["shards"])}
        for name, s in manifest["splits"].items()
    }
    if args.json:
        print(json.dumps({"out": str(args.out), "dtype": manifest["dtype"], "splits": splits}))
        return 0
    for name, s in splits.items():
        bpt = s["bytes"] / s["tokens"] if s["tokens"] else float("nan")
        print(
            f"{name}: {s['tokens']:,} tokens in {s['shards']} shard(s) from {s['documents']:,} document(s), "
            f"{bpt:.2f} bytes/token"
        )
    print(f"wrote {args.out} ({manifest['dtype']})")
    return 0


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="named corpora: list them, fetch one")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = data_sub.add_parser("list", help="the named corpora and where each is found")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_list)
    p = data_sub.add_parser("fetch", help="make a named corpus local and print its path")
    p.add_argument("name", help=f"one of: {', '.join(corpus_names())}")
    p.set_defaults(func=_fetch)

    p = subparsers.add_parser("prepare", help="tokenize a corpus into shards for training")
    p.add_argument("--corpus", required=True, help="a corpus name, a text file, a folder or a .jsonl file")
    p.add_argument("--tokenizer", required=True, help="a saved tokenizer folder")
    p.add_argument("--out", required=True, help="the shard folder to write (replaced atomically)")
    p.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per shard file")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of the corpus held out")
    p.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: up to 2 cores)")
    p.add_argument("--glob", default="**/*.txt", help="files to take from a folder corpus")
    p.add_argument("--jsonl-field", default="text", help="the text field of a .jsonl corpus")
    p.add_argument(
        "--errors",
        choices=["strict", "replace"],
        default="strict",
        help="undecodable bytes: stop with an error (strict) or replace them",
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary, no progress bar")
    p.set_defaults(func=_prepare)

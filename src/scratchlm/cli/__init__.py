"""The `scratchlm` command line: parses arguments, calls the Python API, prints. Nothing else.

Each pipeline stage keeps its subcommands in a module of this package with a `register(subparsers)`
function; a subcommand sets `func(args) -> int`. A `ScratchError` becomes one line on stderr and
exit code 2, and so does a failed read or write (an `OSError` or a `SafetensorError`: `cannot write PATH:
CAUSE`, see `scratchlm.fileio.describe_io_error`); `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from scratchlm import __version__
from scratchlm.errors import ScratchError
from scratchlm.fileio import describe_io_error

# Stage modules, in pipeline order. A module that does not exist yet is simply absent.
STAGES = [
    "data",
    "tokenizer",
    "model",
    "train",
    "finetune",
    "label",
    "reward",
    "ppo",
    "dpo",
    "grpo",
    "eval",
    "chat",
    "serve",
    "plan",
    "speedrun",
]


def unescape(text: str) -> str:
    """`\\n` and `\\t` typed on a command line (stop strings) as the characters they name."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2, with a hint
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="scratchlm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"scratchlm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for stage in STAGES:
        try:
            module = importlib.import_module(f"scratchlm.cli.{stage}")
        except ModuleNotFoundError as e:
            if e.name == f"scratchlm.cli.{stage}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ScratchError as e:
        if args.debug:
            raise
        print(f"scratchlm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scratchlm: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a disk full, a read-only or missing folder: the user's to fix, not a bug
        line = describe_io_error(e)
        if line is None or args.debug:
            raise
        print(f"scratchlm: error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

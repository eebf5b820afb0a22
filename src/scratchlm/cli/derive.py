"""Command-line flags derived from a typed dataclass, so a setting's name, type, default and help are
written once (on the dataclass) instead of again in argparse.

add_dataclass_arguments(parser, SamplingConfig, skip=("stop_at_eot",))
config = dataclass_from_args(SamplingConfig, parser.parse_args())

Each field becomes `--field-name` with `dest` the field's name. Supported annotations: int, float, str,
Path, bool (a `--flag/--no-flag` pair), `Literal[...]` (choices), `list[X]` (repeatable, or one flag with
several values when the field's metadata says `"nargs": "+"`) and `X | None`. A field without a default is a
required flag. Besides `"help"`, a field's metadata may give `"metavar"` (the value's name in --help).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

# Help lines by field name, for fields that do not carry one as `field(metadata={"help": ...})`.
HelpDict = Mapping[str, str]


def add_dataclass_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    skip: Iterable[str] = (),
    rename: Mapping[str, str] | None = None,
    help: HelpDict | None = None,
    value_types: Mapping[str, Callable[[str], Any]] | None = None,
) -> dict[str, argparse.Action]:
    """Add one flag per field of dataclass `cls` (except `skip`); returns the actions by field name.

    `rename` maps a field to its flag when `--field-name` is not the one to keep; `help` gives help lines
    the field metadata lacks; `value_types` maps a field to the function that parses one of its values
    (default: the annotation's type)."""
    rename, help, value_types = rename or {}, help or {}, value_types or {}
    hints = typing.get_type_hints(cls)  # types, also where `from __future__ import annotations` left text
    skip = set(skip)
    actions = {}
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        flag = rename.get(f.name, "--" + f.name.replace("_", "-"))
        default = _default(f)
        kwargs = _argparse_kwargs(f.name, hints[f.name], default, f.metadata.get("nargs"))
        if default is dataclasses.MISSING:
            kwargs.pop("default")
            kwargs["required"] = True
        if f.name in value_types:
            kwargs["type"] = value_types[f.name]
        if "metavar" in f.metadata and kwargs.get("action") is not argparse.BooleanOptionalAction:
            kwargs["metavar"] = f.metadata["metavar"]
        text = help.get(f.name, f.metadata.get("help", "")).replace("%", "%%")  # argparse formats help
        # A bool pair shows its default by itself and a list's is empty (isinstance: `== True` is also 1.0).
        shown = default is not None and default is not dataclasses.MISSING
        if shown and not isinstance(default, (bool, list)):
            text += " (default %(default)s)"
        actions[f.name] = parser.add_argument(flag, dest=f.name, help=text, **kwargs)
    return actions


def dataclass_from_args(cls: type, args: argparse.Namespace) -> Any:
    """Build `cls` from parsed arguments: fields with a flag take its value, the rest keep their default."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.init and hasattr(args, f.name):
            value = getattr(args, f.name)
            values[f.name] = list(value) if isinstance(value, list) else value  # not argparse's default
    return cls(**values)


def _default(f: dataclasses.Field) -> Any:
    """The field's default (a fresh one from a factory), or `dataclasses.MISSING`: a required flag."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


_SCALARS = (int, float, str, Path)


def _argparse_kwargs(name: str, hint: Any, default: Any, nargs: str | None = None) -> dict[str, Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:  # X | None: X, default None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _argparse_kwargs(name, rest[0], default, nargs)
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction, "default": default}
    if hint in _SCALARS:
        return {"type": hint, "default": default, "metavar": hint.__name__.upper()}
    if origin is typing.Literal:
        return {"type": type(args[0]), "choices": args, "default": default}
    if origin is list and len(args) == 1 and args[0] in _SCALARS:
        metavar = args[0].__name__.upper()
        if nargs is not None:  # `--tasks a b c`: one flag, several values (given again, the last wins)
            return {"nargs": nargs, "type": args[0], "default": default, "metavar": metavar}
        # Repeatable; argparse copies the default list before appending, so it is not shared between runs.
        return {"action": "append", "type": args[0], "default": default, "metavar": metavar}
    raise TypeError(f"field {name!r}: no command-line flag for type {hint!r}")


def add_recipe_arguments(parser: argparse.ArgumentParser, example: str) -> None:
    """The flags of a command that trains from a YAML recipe: --config, --out, --set, --resume, --max-time.

    Every recipe field is reachable through `--set a.b=c` (the stage's typed config parses it), so a
    training command adds flags only for what is not a recipe field. `example` shows one `--set`."""
    parser.add_argument(
        "--config", help="YAML recipe or a shipped recipe name (default: built-in defaults; with --resume: "
        "RUN/config.yaml)"
    )  # fmt: skip
    parser.add_argument(
        "--out", required=True, help="run folder (config.yaml, metrics.jsonl, checkpoints/, final/)"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a recipe field, e.g. --set {example} (repeatable)")  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint")
    parser.add_argument("--max-time", help="wall-clock budget, e.g. 150s or 3m (the schedule decays on time)")


def recipe_overrides(args, **fields) -> list[str]:
    """`--set` values, then `--max-time` and the given `field=value` flags (None: not given) after them."""
    overrides = list(args.overrides)
    if args.max_time:
        overrides.append(f"budget.max_time={args.max_time}")
    overrides += [f"{key}={value}" for key, value in fields.items() if value is not None]
    return overrides


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """--device and --dtype of the commands that load a model to run it (generate, chat)."""
    parser.add_argument("--device", default="auto", help="auto (default) | cpu | cuda | cuda:N | mps")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="auto: bf16 on CUDA, else fp32")  # fmt: skip


def report_run(result, folder: str = "model folder") -> int:
    """Print a training command's last evaluation and its model folder; the exit code (130: stopped by a
    signal, with a checkpoint to --resume from)."""
    if result.stopped == "signal":
        return 130
    figures = {k: v for k, v in result.evaluation.items() if isinstance(v, float) and k != "elapsed_s"}
    print(f"step {result.step}: " + "  ".join(f"{k} {v:.4f}" for k, v in figures.items()))
    if result.final_dir is not None:
        print(f"{folder}: {result.final_dir}")
    return 0

"""Typed configurations: dataclasses, YAML recipes and `--set key=value` overrides.

One dataclass per workflow (pretraining, evaluation, ...). A recipe in `configs/` is YAML whose keys
mirror the dataclass fields (nested dataclasses are nested mappings). Overrides use dotted keys,
`--set model.n_layers=6 optim.lr=3e-3`, and are parsed with YAML so numbers, booleans and lists work.
Unknown keys are errors, not silently ignored: a typo in a recipe should never train the wrong model.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from scratchlm.errors import ScratchError
from scratchlm.fileio import write_text_atomic

T = TypeVar("T")


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _unwrap_optional(tp):
    """Optional[X] / X | None -> X (so a None default does not hide the real type)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _coerce(value: Any, tp, where: str):
    tp = _unwrap_optional(tp)
    if value is None:
        return None
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ScratchError(f"config: {where} must be a mapping, got {value!r}")
        return from_dict(tp, value, prefix=where + ".")
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    origin = typing.get_origin(tp)
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        (inner, *_) = typing.get_args(tp) or (Any,)
        out = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return out if origin is list else tuple(out)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ScratchError(
            f"config: {where} must be {tp.__name__}, got {value!r}; fix the recipe or the --set value"
        )
    if tp is int and isinstance(value, bool):
        raise ScratchError(f"config: {where} must be int, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass `cls` from a (nested) mapping, rejecting unknown keys with their path."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ScratchError(
            f"config: unknown key {prefix}{unknown[0]!s}; known keys here: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ScratchError(f"config: {prefix or cls.__name__}: {e}") from None


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b=c` strings to a nested dict (values parsed as YAML scalars)."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ScratchError(f"--set {item!r}: expected key=value, e.g. --set optim.lr=3e-3")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            child = node.get(p)
            child = dict(child) if isinstance(child, dict) else {}
            node[p] = child
            node = child
        node[parts[-1]] = value
    return data


RECIPES_DIR = (
    Path(__file__).resolve().parent / "configs"
)  # shipped recipes; the checkout's configs/ links here


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def resolve_recipe(path: str | Path) -> Path:
    """A YAML file, or the bare name of a shipped recipe ("shakespeare-char"), to a file path.

    A path that exists wins; otherwise a name without folders is looked up among the recipes installed
    with the package, so `--config shakespeare-char` works from any directory and from a wheel.
    """
    path = Path(path)
    if path.is_file():
        return path
    if len(path.parts) == 1:
        shipped = RECIPES_DIR / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
        if shipped.is_file():
            return shipped
    raise ScratchError(
        f"config file not found: {path}; give a YAML file or a shipped recipe name "
        f"({', '.join(recipe_names())})"
    )


def load_yaml(path: str | Path) -> dict:
    path = resolve_recipe(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ScratchError(f"config file {path} is not valid YAML: {e}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise ScratchError(f"config file {path} must hold a mapping at the top level")
    return data


def merge(base: dict, override: dict) -> dict:
    """Deep-merge two nested dicts (override wins)."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Defaults of `cls`, then the YAML recipe at `path`, then `--set` overrides."""
    data = to_dict(cls()) if not path else merge(to_dict(cls()), load_yaml(path))
    data = apply_overrides(data, list(overrides))
    return from_dict(cls, data)


def save_config(cfg, path: str | Path) -> None:

    write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))

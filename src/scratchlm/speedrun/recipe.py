"""A speedrun recipe: the pipeline as data. Each stage's section is the config its own command takes.

    recipe = load_recipe("speedrun-tiny", overrides=["ppo.ppo.kl_coef=0.02"], corpus=None, chat=None)
    recipe.stages            # ("tokenizer", "pretrain", ..., "report"): the ones the recipe keeps
    recipe.section("sft")    # the SFT section as a plain mapping, before the run's paths are wired in

A recipe (`configs/speedrun-*.yaml`) holds the run-wide settings (`seed`, `corpus`, `heldout`, `chat`,
`expected_s`) and one mapping per stage, named as the stage. A training stage's mapping may name a shipped
recipe of its own command (`recipe: sft-align-char`); its other fields are merged over that recipe, so no
setting is typed twice. `--set STAGE.FIELD=VALUE` reaches any field; a stage set to null (or skipped
with `--skip`) is dropped, and a later stage that needs it says so before anything runs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from scratchlm.config import apply_overrides, load_yaml, merge
from scratchlm.errors import ScratchError
from scratchlm.paths import expand_path

STAGES = ("tokenizer", "pretrain", "sft", "preferences", "reward", "ppo", "dpo", "grpo", "eval", "report")
# What each stage reads from the stages before it (eval reads whichever of its inputs the recipe keeps).
NEEDS = {
    "tokenizer": (),
    "pretrain": ("tokenizer",),
    "sft": ("pretrain",),
    "preferences": ("sft",),
    "reward": ("sft", "preferences"),
    "ppo": ("sft", "reward"),
    "dpo": ("sft", "preferences"),
    "grpo": ("sft",),
    "eval": ("pretrain",),
    "report": ("eval",),
}
OPTIONAL_INPUTS = {"eval": ("sft", "preferences", "reward", "ppo", "dpo", "grpo")}
RUN_WIDE = ("seed", "corpus", "heldout", "chat", "min_corpus_chars", "expected_s", "description")
PRESETS = ("tiny", "laptop", "gpu")


@dataclass
class Recipe:
    """The resolved recipe: run-wide settings and each kept stage's section (a plain mapping)."""

    name: str
    seed: int = 0
    corpus: str = "shakespeare"
    heldout: list[str] = field(default_factory=list)
    chat: list[str] = field(default_factory=list)
    min_corpus_chars: int = 0  # a corpus smaller than this is refused: the preset's budgets would over-fit it
    expected_s: dict = field(default_factory=dict)  # seconds each stage takes on 2 CPU cores (for the ETA)
    description: str = ""
    sections: dict = field(default_factory=dict)

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(s for s in STAGES if s in self.sections)

    def section(self, stage: str) -> dict:
        return copy.deepcopy(self.sections[stage])

    def to_dict(self) -> dict:
        return {
            **{k: copy.deepcopy(getattr(self, k)) for k in RUN_WIDE},
            **{s: self.section(s) for s in self.stages},
        }


def recipe_path(preset_or_path: str) -> str:
    """`tiny` -> the shipped `speedrun-tiny` recipe; anything else is a recipe name or a YAML path."""
    return f"speedrun-{preset_or_path}" if preset_or_path in PRESETS else preset_or_path


def load_recipe(
    preset_or_path: str,
    overrides: list[str] = (),
    *,
    corpus: str | None = None,
    chat: list[str] | None = None,
    skip: list[str] = (),
) -> Recipe:
    """The recipe, with `--corpus`/`--chat` and `--set` applied, stages checked against each other."""
    data = load_yaml(recipe_path(preset_or_path))
    if corpus is not None:
        # A corpus of the user's keeps the recipe's held-out documents only if it has them all (the
        # English folder given by path holds Persuasion as the named corpus does).
        held = list(data.get("heldout") or [])
        data["corpus"] = corpus
        data["heldout"] = held if held and all((Path(corpus) / name).is_file() for name in held) else []
    if chat is not None:
        data["chat"] = list(chat)
    data["chat"] = chat_files(data.get("chat") or [])
    data = apply_overrides(data, list(overrides))
    unknown = sorted(set(data) - set(RUN_WIDE) - set(STAGES))
    if unknown:
        raise ScratchError(
            f"speedrun recipe: unknown stage or setting {unknown[0]!r}; stages: {', '.join(STAGES)}; "
            f"run-wide settings: {', '.join(RUN_WIDE)}"
        )
    for name in skip:
        if name not in STAGES:
            raise ScratchError(f"--skip {name}: no such stage; stages: {', '.join(STAGES)}")
        data.pop(name, None)
    sections = {}
    for stage in STAGES:
        value = data.get(stage)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise ScratchError(f"speedrun recipe: stage {stage} must be a mapping (or null to drop it)")
        base = value.pop("recipe", None)
        sections[stage] = merge(load_yaml(base), value) if base else value
    recipe = Recipe(
        name=Path(recipe_path(preset_or_path)).stem,
        seed=int(data.get("seed", 0)),
        corpus=str(data.get("corpus", "shakespeare")),
        heldout=list(data.get("heldout") or []),
        chat=[str(c) for c in data.get("chat") or []],
        min_corpus_chars=int(data.get("min_corpus_chars", 0)),
        expected_s=dict(data.get("expected_s") or {}),
        description=str(data.get("description", "")),
        sections=sections,
    )
    for stage in recipe.stages:
        missing = [need for need in NEEDS[stage] if need not in sections]
        if missing:
            raise ScratchError(
                f"speedrun recipe: stage {stage} needs {missing[0]}, which the recipe drops; "
                f"keep {missing[0]} or drop {stage} too (--skip {stage})"
            )
    return recipe


CHAT_SUFFIXES = (".jsonl", ".json", ".json.gz", ".parquet")


def chat_files(paths: list[str]) -> list[str]:
    """Chat files, a folder standing for the chat files in it (`../shared/data/chitchat`)."""
    out = []
    for spec in paths:
        spec = expand_path(spec, "chat")
        path = Path(spec)
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.name.endswith(CHAT_SUFFIXES))
            if not found:
                raise ScratchError(
                    f"--chat {spec}: no chat files ({', '.join(CHAT_SUFFIXES)}) in that folder"
                )
            out += found
        else:
            out.append(str(spec))
    return out


def stage_window(recipe: Recipe, start: str | None, until: str | None) -> list[str]:
    """The stages `--from START --until UNTIL` selects, in order."""
    stages = list(recipe.stages)
    for flag, name in (("--from", start), ("--until", until)):
        if name is not None and name not in STAGES:
            raise ScratchError(f"{flag} {name}: no such stage; stages: {', '.join(STAGES)}")
        if name is not None and name not in stages:
            raise ScratchError(f"{flag} {name}: the recipe drops that stage; its stages: {', '.join(stages)}")
    first = stages.index(start) if start else 0
    last = stages.index(until) if until else len(stages) - 1
    if first > last:
        raise ScratchError(f"--from {start} comes after --until {until}; nothing would run")
    return stages[first : last + 1]

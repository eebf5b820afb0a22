"""`speedrun(...)`: every stage of the recipe in order, each cached by a fingerprint and resumable.

A stage is done when `RUN/STAGE/stage.json` exists and its fingerprint is the one the stage has now: the
sha256 of its resolved config (the run's folder written as `$RUN`, so two folders agree) and of what its
inputs produced (their digests), plus the corpus or chat files it reads. Change a setting and that stage's
fingerprint changes, so does every digest after it, and exactly those stages run again.

`stage.json` is written last and atomically: a stage killed at any moment is not done. It starts over,
or, for a training stage whose `started.json` has the same fingerprint and which left a checkpoint,
resumes from that checkpoint through the Trainer's exact resume. Both give what an uninterrupted run
gives, because every stage is seeded from the recipe and budgeted in steps, never in seconds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path

from scratchlm.data import load_corpus
from scratchlm.data.chat_readers import read_conversations
from scratchlm.errors import ScratchError
from scratchlm.fileio import sha256_file, write_json_atomic
from scratchlm.speedrun.recipe import NEEDS, OPTIONAL_INPUTS, Recipe, load_recipe, stage_window
from scratchlm.speedrun.stages import STAGE_TABLE, has_checkpoint, stage_config

MARKER = "speedrun.json"  # RUN/speedrun.json: this folder is a speedrun, and of which recipe
RECORD = "stage.json"  # RUN/STAGE/stage.json: the stage is done (fingerprint, digest, figures, time)
STARTED = "started.json"  # RUN/STAGE/started.json: the fingerprint of the attempt under way


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def stage_record(root: Path, stage: str) -> dict | None:
    """A finished stage's record (None if the stage is not done): the one reader of stage.json."""
    return read_json(Path(root) / stage / RECORD)


def portable(value, root: Path):
    """`value` with the run's folder written as `$RUN`: fingerprints and the report card do not depend on
    where the run lives."""
    if isinstance(value, dict):
        return {k: portable(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v, root) for v in value]
    if isinstance(value, str):
        return value.replace(str(root), "$RUN")
    return value


class Speedrun:
    """One speedrun folder: the recipe, each stage's config and fingerprint, and the loop over stages."""

    def __init__(self, recipe: Recipe, root: Path, say=print):
        self.recipe, self.root, self.say = recipe, root, say
        self.configs = {s: stage_config(s, recipe, root) for s in recipe.stages}  # every mistake, up front
        for path in recipe.chat:  # a missing file or one no reader knows: before any stage runs
            if "sft" in recipe.stages:
                read_conversations(path)
        self._source_digests: dict[str, str] = {}

    def inputs(self, stage: str) -> list[str]:
        optional = [s for s in OPTIONAL_INPUTS.get(stage, ()) if s in self.recipe.stages]
        if stage == "report":
            optional = [s for s in self.recipe.stages if s != "report"]
        return list(dict.fromkeys([*NEEDS[stage], *optional]))

    def fingerprint(self, stage: str) -> str | None:
        """The stage's fingerprint now, or None while an input is not done."""
        digests = {}
        for need in self.inputs(stage):
            record = stage_record(self.root, need)
            if record is None or record.get("fingerprint") != self.fingerprint(need):
                return None
            digests[need] = record["digest"]
        sources = {}
        if stage in ("tokenizer", "pretrain"):
            sources["corpus"] = self._source("corpus", self.recipe.corpus)
        if stage == "sft":
            sources.update({f"chat:{c}": self._source("chat", c) for c in self.recipe.chat})
        config = portable(dataclasses.asdict(self.configs[stage]), self.root)
        blob = json.dumps(
            {"stage": stage, "config": config, "inputs": digests, "sources": sources}, sort_keys=True
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def _source(self, kind: str, spec: str) -> str:
        if spec not in self._source_digests:
            path = Path(spec)
            if kind == "chat":
                if not path.exists():
                    raise ScratchError(f"--chat {spec}: no such file or folder")
                files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
                self._source_digests[spec] = hashlib.sha256(
                    "".join(sha256_file(p) for p in files).encode()
                ).hexdigest()
            else:
                self._source_digests[spec] = load_corpus(spec).sha256
        return self._source_digests[spec]

    def done(self, stage: str) -> bool:
        record = stage_record(self.root, stage)
        return record is not None and record.get("fingerprint") == self.fingerprint(stage)

    def run_stage(self, stage: str, index: int, total: int, eta: str) -> dict:
        entry, out = STAGE_TABLE[stage], self.root / stage
        fingerprint = self.fingerprint(stage)
        assert fingerprint is not None, f"{stage} ran before its inputs"
        started = read_json(out / STARTED) or {}
        resume = entry.trains and started.get("fingerprint") == fingerprint and has_checkpoint(out)
        if out.exists() and not resume:
            shutil.rmtree(out)  # a different config, or an attempt with nothing to resume from
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / STARTED, {"fingerprint": fingerprint})
        self.say(f"[{index}/{total}] {stage}{' (resuming)' if resume else ''}  {eta}")
        start = time.perf_counter()
        figures = entry.run(self.configs[stage], out, resume, self.recipe, self.root, self.say)
        wall = time.perf_counter() - start
        record = {
            "stage": stage,
            "fingerprint": fingerprint,
            "digest": entry.digest(out),
            "wall_s": wall,
            "resumed": bool(resume),
            "figures": portable(figures, self.root),
            "config": portable(dataclasses.asdict(self.configs[stage]), self.root),
        }
        write_json_atomic(out / RECORD, record)
        return record


def _eta(recipe: Recipe, stage: str, remaining: list[str], taken: dict[str, float]) -> str:
    """'stage ~2m, run ~14m left' from the recipe's expected seconds, scaled by how the run goes so far."""
    expected = recipe.expected_s
    if not expected:
        return ""
    done_expected = sum(expected.get(s, 0) for s in taken)
    # The machine's pace so far, once the stages behind it were expected to take a tenth of the run.
    trusted = done_expected >= 0.1 * sum(expected.values())
    scale = sum(taken.values()) / done_expected if trusted else 1.0

    def fmt(seconds: float) -> str:
        return f"{seconds / 60:.0f}m" if seconds >= 90 else f"{seconds:.0f}s"

    stage_s = expected.get(stage, 0) * scale
    left = sum(expected.get(s, 0) for s in remaining) * scale
    return f"(stage ~{fmt(stage_s)}, run ~{fmt(left)} left)"


def check_out(root: Path, recipe: Recipe, resume: bool, start: str | None) -> None:
    """A new folder, an empty one, or this speedrun's own (with --resume or --from)."""
    if not root.exists() or not any(root.iterdir()):
        if start is not None:
            raise ScratchError(
                f"--from {start}: {root} holds no speedrun whose earlier stages it could start from; "
                "run without --from first"
            )
        return
    marker = read_json(root / MARKER)
    if marker is None:
        raise ScratchError(f"--out {root} holds files that are not a speedrun; choose a new or empty folder")
    if resume or start is not None:
        return
    same = marker.get("recipe") == portable(recipe.to_dict(), root)
    what = "this speedrun" if same else f"a different speedrun (recipe {marker.get('name')})"
    raise ScratchError(
        f"--out {root} already holds {what}; add --resume to carry on (changed settings rerun their "
        "stages and those after them), or choose another --out"
    )


def speedrun(
    preset: str = "laptop",
    out: str | Path = "runs/speedrun",
    *,
    resume: bool = False,
    overrides: list[str] = (),
    corpus: str | None = None,
    chat: list[str] | None = None,
    start: str | None = None,
    until: str | None = None,
    skip: list[str] = (),
    label: bool = False,
    say=print,
) -> dict:
    """Run the speedrun recipe `preset` (tiny | laptop | gpu, or a recipe file) into `out`.

    Returns {stage: its record} for the stages of the window. Settings are checked, and the folder, before
    any stage runs; a stage that fails leaves every finished stage as it was."""
    overrides = [*overrides, *(["preferences.label=true"] if label else [])]
    recipe = load_recipe(preset, overrides, corpus=corpus, chat=chat, skip=skip)
    root = Path(out).expanduser().resolve()
    window = stage_window(recipe, start, until)
    run = Speedrun(recipe, root, say)
    check_out(root, recipe, resume, start)
    stages = list(recipe.stages)
    for stage in stages[: stages.index(window[0])]:
        if not run.done(stage):
            raise ScratchError(
                f"--from {window[0]}: stage {stage} before it is not done (or its settings changed); "
                f"run with --resume and without --from"
            )
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(root / MARKER, {"name": recipe.name, "recipe": portable(recipe.to_dict(), root)})
    records, taken = {}, {}
    for i, stage in enumerate(window):
        forced = start is not None and stages.index(stage) >= stages.index(start)
        if run.done(stage) and not forced:
            records[stage] = stage_record(root, stage)
            say(
                f"[{i + 1}/{len(window)}] {stage}: done already "
                f"(fingerprint {records[stage]['fingerprint'][:12]})"
            )
            continue
        if forced:
            (root / stage / RECORD).unlink(missing_ok=True)
        eta = _eta(recipe, stage, window[i:], taken)
        records[stage] = run.run_stage(stage, i + 1, len(window), eta)
        taken[stage] = records[stage]["wall_s"]
    if "report" in window:
        say(f"report card: {root / 'report.md'} and report.html; chat with: scratchlm chat --ckpt {out}")
    return records

"""BLiMP (Warstadt et al., 2020): 67 paradigms of English minimal pairs, scored as lm-evaluation-harness does.

    from scratchlm.eval.blimp import score_blimp
    score_blimp(model, tokenizer)                # {"mean": 0.61, "per_paradigm": {...}, "pairs": 20100, ...}
    scratchlm eval --ckpt runs/en --tasks blimp  # or blimp:max_pairs=50 (the first 50 pairs of each paradigm)

The folder holds one `PARADIGM.jsonl` per paradigm, one pair a line (`sentence_good`, `sentence_bad`,
`field`); it defaults to `$SCRATCHLM_DATA/blimp`. A pair is right when the model gives the whole good
sentence a higher log-probability than the bad one; the score is the mean over paradigms of each one's
share of right pairs (the published figure: a pooled share would weigh paradigms by their size).

Each sentence is the request lm-eval's `blimp` tasks make (multiple_choice with an empty `doc_to_text`):
the empty context and `" " + sentence` (the default target delimiter), which `encode_pair` turns into the
end-of-text token followed by the tokens of " sentence", every one of them scored. A tie goes to the good
sentence, as numpy's argmax does in the harness. So the figures are the harness's through our plugin
(tests/test_eval_blimp.py runs both on the same files).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from scratchlm.data.tasks import parse_spec
from scratchlm.errors import ScratchError
from scratchlm.eval.scoring import encode_pair, score_continuations
from scratchlm.eval.tasks.readers import numbered_rows
from scratchlm.paths import mirror_dir

DELIMITER = " "  # lm-eval's default target_delimiter, between the empty context and each choice
SENTENCES = ("sentence_good", "sentence_bad")
SPEC_KEYS = ("max_pairs", "folder")


@dataclass
class Paradigm:
    name: str  # the file's stem, BLiMP's UID (adjunct_island, ...)
    field: str  # syntax, morphology, semantics, syntax_semantics ("" when the file does not say)
    pairs: list[tuple[str, str]]  # (good sentence, bad sentence)


def is_blimp_spec(spec: str) -> bool:
    return spec == "blimp" or spec.startswith("blimp:")


def parse_blimp_spec(spec: str) -> tuple[Path | None, int | None]:
    """(folder, max_pairs) of `blimp[:max_pairs=N][,folder=DIR]` (None: the default)."""
    name, params = parse_spec(spec)
    assert name == "blimp", spec
    if unknown := sorted(set(params) - set(SPEC_KEYS)):
        raise ScratchError(
            f"task spec {spec!r}: unknown parameter {unknown[0]!r}; blimp takes max_pairs, folder"
        )
    max_pairs = params.get("max_pairs")
    if max_pairs is not None and (not max_pairs.isdigit() or int(max_pairs) < 1):
        raise ScratchError(f"task spec {spec!r}: max_pairs must be a whole number >= 1, got {max_pairs!r}")
    folder = params.get("folder")
    return (Path(folder) if folder else None), (int(max_pairs) if max_pairs else None)


def default_folder() -> Path:
    """$SCRATCHLM_DATA/blimp."""
    mirror = mirror_dir()
    if mirror is None:
        raise ScratchError(
            "BLiMP is read from $SCRATCHLM_DATA/blimp, but SCRATCHLM_DATA is not set; "
            "set it, or give the folder (blimp:folder=DIR)"
        )
    return mirror / "blimp"


def read_blimp(folder: str | Path | None = None, max_pairs: int | None = None) -> list[Paradigm]:
    """Every paradigm of the folder (sorted by name), each cut to its first `max_pairs` pairs.

    Every line is checked, used or not: a missing or empty sentence is a ScratchError naming FILE:LINE.
    """
    folder = default_folder() if folder is None else Path(folder)
    if max_pairs is not None and max_pairs < 1:
        raise ScratchError(f"max_pairs must be >= 1 (or unset: every pair), got {max_pairs}")
    if not folder.is_dir():
        raise ScratchError(
            f"BLiMP folder {folder} does not exist; give the folder of its PARADIGM.jsonl files"
        )
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise ScratchError(f"BLiMP folder {folder} holds no .jsonl files; give the folder of its paradigms")
    return [_read_paradigm(path, max_pairs) for path in files]


def _read_paradigm(path: Path, max_pairs: int | None) -> Paradigm:
    pairs, field = [], ""
    for number, row in numbered_rows(path):
        where = f"{path}:{number}"
        if not isinstance(row, dict):
            raise ScratchError(f"{where}: a BLiMP line must be an object with sentence_good and sentence_bad")
        for key in SENTENCES:
            if key not in row:
                raise ScratchError(
                    f"{where}: no {key!r} field; each BLiMP line needs sentence_good and sentence_bad"
                )
            if not isinstance(row[key], str) or not row[key].strip():
                raise ScratchError(f"{where}: {key} is empty; each BLiMP line needs two non-empty sentences")
        pairs.append((row["sentence_good"], row["sentence_bad"]))
        # One published paradigm spells its field "syntax/semantics", the others "syntax_semantics".
        field = field or str(row.get("field", "")).replace("/", "_")
    return Paradigm(path.stem, field, pairs[:max_pairs])


def pair_loglikelihoods(
    model, tokenizer, pairs: Sequence[tuple[str, str]], *, batch_size: int = 64, progress: str | None = None
) -> list[tuple[float, float]]:
    """(log p(good), log p(bad)) in nats for each pair: every sentence padded into shared batches."""
    requests = [encode_pair(tokenizer, "", DELIMITER + sentence) for pair in pairs for sentence in pair]
    scores = [ll for ll, _ in score_continuations(model, requests, batch_size=batch_size, progress=progress)]
    return list(zip(scores[0::2], scores[1::2]))


def score_paradigms(
    model, tokenizer, paradigms: Sequence[Paradigm], *, batch_size: int = 64, progress: bool = False
) -> dict:
    """`score_blimp` on paradigms already read (`read_blimp`)."""
    pairs = [pair for paradigm in paradigms for pair in paradigm.pairs]
    was_training = model.training
    model.eval()
    try:
        lls = pair_loglikelihoods(
            model, tokenizer, pairs, batch_size=batch_size, progress="blimp" if progress else None
        )
    finally:
        model.train(was_training)
    per_paradigm, by_field, start = {}, {}, 0
    for paradigm in paradigms:
        mine = lls[start : start + len(paradigm.pairs)]
        start += len(paradigm.pairs)
        per_paradigm[paradigm.name] = sum(good >= bad for good, bad in mine) / len(mine)
        by_field.setdefault(paradigm.field, []).append(per_paradigm[paradigm.name])
    return {
        "mean": sum(per_paradigm.values()) / len(per_paradigm),
        "per_paradigm": per_paradigm,
        "per_field": {field: sum(v) / len(v) for field, v in sorted(by_field.items()) if field},
        "pairs": len(pairs),
    }


def score_blimp(
    model,
    tokenizer,
    folder: str | Path | None = None,
    max_pairs: int | None = None,
    *,
    batch_size: int = 64,
    progress: bool = False,
) -> dict:
    """{"mean": the mean over paradigms of the share of right pairs, "per_paradigm": {name: share},
    "per_field": {field: mean over its paradigms}, "pairs": pairs scored}, on the first `max_pairs`
    pairs of each paradigm in `folder` (default `$SCRATCHLM_DATA/blimp`)."""
    return score_paradigms(
        model, tokenizer, read_blimp(folder, max_pairs), batch_size=batch_size, progress=progress
    )


def blimp_figures(scores: dict) -> dict:
    """The flat figures `scratchlm eval` prints and records: acc (the mean), pairs, acc:FIELD."""
    figures = {"acc": scores["mean"], "pairs": scores["pairs"], "paradigms": len(scores["per_paradigm"])}
    return figures | {f"acc:{field}": value for field, value in scores["per_field"].items()}

"""The speedrun's stages: each wires the run's own folders into its section and calls its stage's API.

A training stage is the very function its command calls (`pretrain`, `sft`, `train_reward`, `ppo`, `dpo`,
`grpo`) on the typed config its command reads; the speedrun only fills in where the inputs are
(`base`, `policy`, `reward`, `prefs`, the tokenizer, the corpus) and the run's seed. The three stages no
command owns whole (tokenizer, preferences, eval) have their small configs here.

Every stage writes into `RUN/STAGE/`; `digest(folder)` names what it produced (the model folder's
manifest, the preference file's sha256, the tokenizer's fingerprint) so the stages after it can tell
when it changed.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scratchlm.config import from_dict
from scratchlm.data import load_corpus
from scratchlm.data.corpora import hold_out
from scratchlm.errors import ScratchError
from scratchlm.fileio import atomic_dir, sha256_file
from scratchlm.speedrun.recipe import Recipe
from scratchlm.train.run_dir import RunDir, resolve_model_dir


@dataclass
class TokenizerStageConfig:
    kind: str = "bpe"  # bpe | char
    vocab_size: int = 4096  # bpe: ids in all, specials included
    extra_chars: str = ""  # char: an alphabet the corpus lacks but the tasks need (digits, "+-=?")
    workers: int = 1  # bpe: processes that pre-tokenize the corpus

    def __post_init__(self) -> None:
        if self.kind not in ("bpe", "char"):
            raise ScratchError(f"tokenizer.kind {self.kind!r}: use bpe or char")


@dataclass
class PreferencesStageConfig:
    """Rankings of the SFT model's answers: a simulated annotator, or a person on the label page."""

    prompts: str = "task:dialogue:user_chars=110,reply_chars=100"  # JSONL file or task:SPEC
    n: int = 256  # prompts ranked
    k: int = 4  # answers per prompt
    judge: str = "sentiment"  # the hidden gold of the simulated annotator
    ceiling: float = 0.8  # noise ceiling on the generated pairs (Bradley-Terry noise picked to reach it)
    max_new_tokens: int = 64
    temperature: float = 1.0
    label: bool = False  # a person ranks on the label page (--label) instead of the simulated annotator
    host: str = "127.0.0.1"
    port: int = 8000


@dataclass
class EvalStageConfig:
    """What the report card measures (scratchlm.speedrun.evaluation)."""

    device: str = "auto"
    val_chars: int = 200_000  # held-out text scored for bits per byte (0: all of the validation split)
    blimp_pairs: int = 0  # BLiMP pairs per paradigm (0: skip BLiMP; 300: every pair of the mirror)
    task_examples: int = 100  # held-out prompts per exact-answer task (greedy)
    chat_heldout: int = 200  # held-out real conversations for the reply loss (when the recipe has chat)
    gold_prompts: int = 64  # held-out prompts for gold and KL of each aligned model
    best_of: list[int] = field(default_factory=lambda: [4, 16])  # best-of-n of the SFT model by reward
    max_new_tokens: int = 64
    fixed_prompts: list[str] = field(default_factory=list)  # answered after every stage, side by side
    fixed_tokens: int = 48


@dataclass
class ReportStageConfig:
    """The planner's estimate of each stage's work on the gpu preset's hardware, beside what it took."""

    gpus: str = "1xH100"
    mfu: float = 0.4
    price_per_gpu_hour: float = 2.5


def _wire_pretrain(section: dict, recipe: Recipe, root: Path) -> dict:
    data = section.setdefault("data", {})
    data.update(corpus=recipe.corpus, heldout=recipe.heldout, tokenizer=str(tokenizer_dir(root)))
    for key in ("extra_chars", "chat_tokens", "vocab_size"):  # the tokenizer stage owns the vocabulary
        data.pop(key, None)
    section["seed"] = recipe.seed
    return section


def _wire_sft(section: dict, recipe: Recipe, root: Path) -> dict:
    """The run's chat files replace the SFT recipe's (`chat` is their one place in a speedrun); each takes
    the weight the recipe gave its first file (1.0 if none), the tasks keep theirs."""
    data = section.setdefault("data", {})
    tasks, weights = list(data.get("tasks") or []), data.get("weights")
    if weights:
        file_weight = float(weights[len(tasks)]) if len(weights) > len(tasks) else 1.0
        data["weights"] = [float(w) for w in weights[: len(tasks)]] + [file_weight] * len(recipe.chat)
    data["files"] = list(recipe.chat)
    section.update(base=str(root / "pretrain"), seed=recipe.seed)
    return section


def _wire_reward(section: dict, recipe: Recipe, root: Path) -> dict:
    section.update(base=str(root / "sft"), prefs=str(prefs_path(root)), seed=recipe.seed)
    return section


def _wire_ppo(section: dict, recipe: Recipe, root: Path) -> dict:
    section.update(policy=str(root / "sft"), reward=str(root / "reward"), seed=recipe.seed)
    return section


def _wire_dpo(section: dict, recipe: Recipe, root: Path) -> dict:
    section.update(policy=str(root / "sft"), prefs=str(prefs_path(root)), seed=recipe.seed)
    return section


def _wire_grpo(section: dict, recipe: Recipe, root: Path) -> dict:
    section.update(policy=str(root / "sft"), seed=recipe.seed)
    return section


def _same(section: dict, recipe: Recipe, root: Path) -> dict:
    return section


def tokenizer_dir(root: Path) -> Path:
    return root / "tokenizer" / "tokenizer"


def prefs_path(root: Path) -> Path:
    return root / "preferences" / "prefs.jsonl"


# ---- running each stage: (typed config, its folder, resume, the recipe, the run's root, say) -> figures


def _run_tokenizer(cfg: TokenizerStageConfig, out: Path, resume: bool, recipe: Recipe, root: Path, say):
    from scratchlm.tokenizer import CHAT_SPECIAL_TOKENS, ENDOFTEXT, train_bpe, train_char
    from scratchlm.train.prepare import VAL_FRACTION

    corpus = load_corpus(recipe.corpus)
    if recipe.heldout:
        hold_out(corpus, recipe.heldout)
    train_docs, val_docs = corpus.split(VAL_FRACTION)
    chars = sum(len(d) for d in train_docs)
    if chars < recipe.min_corpus_chars:
        raise ScratchError(
            f"corpus {recipe.corpus} has {chars:,} training characters, fewer than the {recipe.name} "
            f"recipe's {recipe.min_corpus_chars:,}: give a bigger --corpus, or --preset tiny"
        )
    if cfg.kind == "bpe":
        say(f"training a {cfg.vocab_size}-id byte-level BPE on {chars:,} characters ...")
        tokenizer = train_bpe(train_docs, cfg.vocab_size, workers=cfg.workers)
    else:
        tokenizer = train_char(
            [*corpus.documents, cfg.extra_chars], special_tokens=(ENDOFTEXT, *CHAT_SPECIAL_TOKENS)
        )
    with atomic_dir(tokenizer_dir(root)) as tmp:
        tokenizer.save(tmp)
    return {
        "kind": cfg.kind,
        "vocab_size": tokenizer.vocab_size,
        "train_chars": chars,
        "val_chars": sum(len(d) for d in val_docs),
        "samples": chars,
    }


def _training(entry: str) -> Callable:
    """A training stage: the stage's own API function, then the figures of its result."""

    def run(cfg, out: Path, resume: bool, recipe: Recipe, root: Path, say) -> dict:
        module, name = entry.rsplit(":", 1)
        import importlib

        result = getattr(importlib.import_module(module), name)(cfg, out, resume=resume)
        if result.stopped == "signal":
            raise KeyboardInterrupt
        figures = {"step": result.step, "tokens": result.tokens, "samples": result.tokens}
        figures.update({k: v for k, v in result.evaluation.items() if isinstance(v, (int, float))})
        return figures

    return run


def _run_preferences(cfg: PreferencesStageConfig, out: Path, resume: bool, recipe: Recipe, root: Path, say):
    from scratchlm.align.annotators import get_judge
    from scratchlm.align.preferences import write_records
    from scratchlm.align.prompts import read_prompts
    from scratchlm.align.simulate import simulate_preferences
    from scratchlm.eval.checkpoint import load_checkpoint
    from scratchlm.generate.config import SamplingConfig
    from scratchlm.model.device import pick_device

    prompts = read_prompts(cfg.prompts, n=cfg.n, split="train", seed=recipe.seed)
    sampling = SamplingConfig(
        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=recipe.seed
    )
    model, tokenizer, _ = load_checkpoint(root / "sft", device=str(pick_device("auto")))
    out.mkdir(parents=True, exist_ok=True)
    if cfg.label:
        ranked = _label_page(cfg, model, tokenizer, prompts, sampling, out, say)
        return {"prompts": ranked, "samples": ranked * cfg.k, "labelled_by": "person"}
    records, stats = simulate_preferences(
        model,
        tokenizer,
        prompts,
        cfg.k,
        get_judge(cfg.judge),
        sampling,
        ceiling=cfg.ceiling,
        seed=recipe.seed,
    )
    write_records(prefs_path(root), records)
    say(f"preferences: {stats.summary()}")
    return {**asdict(stats), "samples": stats.prompts * cfg.k, "labelled_by": "simulated"}


def _label_page(cfg, model, tokenizer, prompts, sampling, out: Path, say) -> int:
    """Serve the label page until a person has ranked every prompt, then stop it."""
    import uvicorn

    from scratchlm.align.simulate import sample_answers
    from scratchlm.serve.label_app import LabelQueue, check_page_k, create_app

    check_page_k(cfg.k)
    sample = functools.partial(sample_answers, model, tokenizer, k=cfg.k, sampling=sampling, batch_size=1)
    queue = LabelQueue(prompts, prefs_path(out.parent), sample, cfg.k)
    server = uvicorn.Server(
        uvicorn.Config(create_app(queue), host=cfg.host, port=cfg.port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    say(f"label page: http://{cfg.host}:{cfg.port}/  rank every prompt's answers; the run goes on when done")
    try:
        while (progress := queue.progress())[0] < progress[1]:
            time.sleep(1.0)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    return queue.progress()[0]


def _run_eval(cfg: EvalStageConfig, out: Path, resume: bool, recipe: Recipe, root: Path, say):
    from scratchlm.speedrun.evaluation import evaluate_run

    return evaluate_run(cfg, recipe, root, out, say)


def _run_report(cfg: ReportStageConfig, out: Path, resume: bool, recipe: Recipe, root: Path, say):
    from scratchlm.speedrun.card import write_card

    return write_card(cfg, recipe, root, out)


# ---- what each stage produced


def _model_digest(out: Path) -> str:
    return sha256_file(resolve_model_dir(out) / "manifest.json")


def _file_digest(name: str) -> Callable[[Path], str]:
    return lambda out: sha256_file(out / name)


def _tokenizer_digest(out: Path) -> str:
    from scratchlm.tokenizer import load_tokenizer

    return load_tokenizer(out / "tokenizer").fingerprint()


@dataclass(frozen=True)
class Stage:
    name: str
    config: Callable[[], type]  # the typed config class (imported when asked: `--help` stays light)
    wire: Callable[[dict, Recipe, Path], dict]
    run: Callable
    digest: Callable[[Path], str]
    trains: bool = False  # a Trainer run: resumes from its newest checkpoint


def _cls(module: str, name: str) -> Callable[[], type]:
    def get():
        import importlib

        return getattr(importlib.import_module(module), name)

    return get


STAGE_TABLE: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage("tokenizer", lambda: TokenizerStageConfig, _same, _run_tokenizer, _tokenizer_digest),
        Stage(
            "pretrain",
            _cls("scratchlm.train.config", "PretrainConfig"),
            _wire_pretrain,
            _training("scratchlm.train.causal_lm:pretrain"),
            _model_digest,
            trains=True,
        ),
        Stage(
            "sft",
            _cls("scratchlm.finetune.config", "SFTConfig"),
            _wire_sft,
            _training("scratchlm.finetune.sft_objective:sft"),
            _model_digest,
            trains=True,
        ),
        Stage(
            "preferences",
            lambda: PreferencesStageConfig,
            _same,
            _run_preferences,
            _file_digest("prefs.jsonl"),
        ),
        Stage(
            "reward",
            _cls("scratchlm.align.reward_config", "RewardConfig"),
            _wire_reward,
            _training("scratchlm.align.reward_objective:train_reward"),
            _model_digest,
            trains=True,
        ),
        Stage(
            "ppo",
            _cls("scratchlm.align.ppo_config", "PPOConfig"),
            _wire_ppo,
            _training("scratchlm.align.ppo_objective:ppo"),
            _model_digest,
            trains=True,
        ),
        Stage(
            "dpo",
            _cls("scratchlm.align.dpo_config", "DPOConfig"),
            _wire_dpo,
            _training("scratchlm.align.dpo_objective:dpo"),
            _model_digest,
            trains=True,
        ),
        Stage(
            "grpo",
            _cls("scratchlm.align.grpo_config", "GRPOConfig"),
            _wire_grpo,
            _training("scratchlm.align.grpo_objective:grpo"),
            _model_digest,
            trains=True,
        ),
        Stage("eval", lambda: EvalStageConfig, _same, _run_eval, _file_digest("eval.json")),
        Stage("report", lambda: ReportStageConfig, _same, _run_report, _file_digest("report.json")),
    ]
}


def stage_config(stage: str, recipe: Recipe, root: Path):
    """The typed config of `stage`: its section with the run's folders wired in, checked field by field."""
    entry = STAGE_TABLE[stage]
    section = entry.wire(recipe.section(stage), recipe, root)
    cls = entry.config()
    config = from_dict(cls, _defaults_under(cls, section), prefix=f"{stage}.")
    if entry.trains:
        from scratchlm.train.config import check_budget

        check_budget(config)
    return config


def _defaults_under(cls, section: dict) -> dict:
    """The section over the config's defaults (nested sections merge), as `load_config` builds one."""
    from scratchlm.config import merge, to_dict

    return merge(to_dict(cls()), section) if _has_defaults(cls) else section


def _has_defaults(cls) -> bool:
    try:
        cls()
    except Exception:
        return False
    return True


def has_checkpoint(out: Path) -> bool:
    return out.is_dir() and bool(RunDir(out).checkpoints())

"""Answers to rank, and simulated labelling: K sampled answers per prompt, ranked by a noisy gold judge.

    answers = sample_answers(model, tokenizer, prompts, k=4, sampling=SamplingConfig(max_new_tokens=64))
    records, stats = simulate_preferences(model, tokenizer, prompts, 4, get_judge("sentiment"), sampling)
    write_records("prefs.jsonl", records); print(stats.summary())

Both the label page (a person ranks) and the simulated annotator (`scratchlm.align.annotators`) rank the
answers `sample_answers` gives. Sampling is seeded per chunk of prompts, keyed by the chunk's position in
the source, so any slice that covers whole chunks gets the answers the whole source would: the label page
samples one prompt at a time (`batch_size=1`, `start=i`) and gets the same answers after a restart.

The noise scale tau is picked so the noise ceiling on the generated pairs is the one asked for (default
0.8): a reward model trained on the file can then be judged against a known best accuracy. Pairs of two
identical answers are left out of that ceiling, as `read_preferences` leaves them out of training.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from scratchlm.align.annotators import Annotator, agreement_ceiling, tau_for_ceiling
from scratchlm.align.rollout import rollout
from scratchlm.data.chat import chat_token_ids
from scratchlm.errors import ScratchError
from scratchlm.generate.config import SamplingConfig

Message = dict[str, str]


def chunk_seed(seed: int, start: int) -> int:
    """The sampling seed of the chunk whose first prompt is prompt `start` of the source.

    Hashed rather than `seed + start`, so seed 1 does not replay seed 0's second chunk."""
    digest = hashlib.sha256(f"scratchlm-answers:{seed}:{start}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # < 2**63: what torch.Generator.manual_seed takes


def check_k(k: int) -> None:
    if k < 2:
        raise ScratchError(f"k = {k}: a ranking needs at least two answers per prompt; give --k 2 or more")


def sample_answers(
    model,
    tokenizer,
    prompts: Sequence[Sequence[Message]],
    k: int,
    sampling: SamplingConfig,
    *,
    batch_size: int = 16,
    start: int = 0,
) -> list[list[str]]:
    """`k` answers to each prompt, sampled `batch_size` prompts per rollout (see the module docstring).

    `start` is the position of `prompts[0]` in its source; with `sampling.seed` set, chunks start at
    multiples of `batch_size` in the source and each is seeded by `chunk_seed`. Without a seed the global
    torch generator is used (answers then differ from run to run)."""
    check_k(k)
    chat_token_ids(tokenizer)  # a tokenizer without the chat tokens: one line that says so
    if sampling.max_new_tokens < 1:
        raise ScratchError("max_new_tokens is 0: an answer needs at least one new token")
    if batch_size < 1:
        raise ScratchError(f"batch_size must be >= 1, got {batch_size}")
    answers: list[list[str]] = []
    position = start
    while len(answers) < len(prompts):
        end = min((position // batch_size + 1) * batch_size, start + len(prompts))  # the next chunk border
        chunk = prompts[position - start : end - start]
        config = sampling
        if sampling.seed is not None:
            config = dataclasses.replace(sampling, seed=chunk_seed(sampling.seed, position))
        texts = rollout(model, tokenizer, chunk, config, group=k).texts  # a prompt's k rows are consecutive
        answers += [texts[i * k : (i + 1) * k] for i in range(len(chunk))]
        position = end
    return answers


@dataclass
class SimulationStats:
    judge: str
    prompts: int
    pairs: int  # pairs of two different answers: what read_preferences trains on
    identical: int  # pairs of two identical answers, left out
    tau: float
    ceiling: float  # the best accuracy any model can reach on these labels, E[max(p, 1 - p)]
    agreement: float  # how often this draw's labels agree with gold (ties count one half)
    mean_gold: float  # over every answer

    def summary(self) -> str:
        skipped = f" ({self.identical} of identical answers left out)" if self.identical else ""
        return (
            f"{self.prompts} prompts, {self.pairs} pairs{skipped}, tau {self.tau:.4g}, "
            f"noise ceiling {self.ceiling:.3f} (these labels agree with gold on {self.agreement:.3f}), "
            f"mean gold {self.mean_gold:.3f} ({self.judge})"
        )


def gold_differences(answers: Sequence[Sequence[str]], gold: Sequence[Sequence[float]]) -> list[float]:
    """g(a) - g(b) over every pair of two different answers to one prompt."""
    return [
        g[i] - g[j]
        for a, g in zip(answers, gold)
        for i in range(len(a))
        for j in range(i + 1, len(a))
        if a[i] != a[j]
    ]


def gold_agreement(records: Sequence[dict]) -> float:
    """How often a ranking puts the answer with the higher `gold` first, over pairs of different answers."""
    agree = total = 0.0
    for record in records:
        responses, gold = record["responses"], record["gold"]
        for i in range(len(responses)):
            for j in range(i + 1, len(responses)):
                if responses[i] != responses[j]:
                    total += 1
                    agree += 1.0 if gold[i] > gold[j] else 0.5 if gold[i] == gold[j] else 0.0
    return agree / total if total else float("nan")


def rank_answers(
    prompts: Sequence[Sequence[Message]], answers: Sequence[Sequence[str]], judge, tau: float, seed: int = 0
) -> list[dict]:
    """One ranking record per prompt, by a Bradley-Terry annotator of noise `tau` over `judge`'s gold."""
    annotator = Annotator(judge, tau, seed=seed)
    records = []
    for prompt, texts in zip(prompts, answers):
        order, gold = annotator.rank(prompt, texts)
        records.append(
            {
                "prompt": [dict(m) for m in prompt],
                "responses": [texts[i] for i in order],
                "gold": [gold[i] for i in order],
                "tau": tau,
                "annotator": f"simulated:{judge.name}",
            }
        )
    return records


def simulate_preferences(
    model,
    tokenizer,
    prompts: Sequence[Sequence[Message]],
    k: int,
    judge,
    sampling: SamplingConfig,
    tau: float | None = None,
    ceiling: float = 0.8,
    seed: int = 0,
) -> tuple[list[dict], SimulationStats]:
    """Sample `k` answers per prompt, rank them with a simulated annotator: (records, stats).

    `tau` None picks the tau whose noise ceiling on the generated pairs is `ceiling`. `seed` seeds the
    annotator's noise, and the sampling too when `sampling.seed` is None, so a run is reproducible."""
    if not prompts:
        raise ScratchError("no prompts to label; give a prompts file or a task source with --n > 0")
    if sampling.seed is None:
        sampling = dataclasses.replace(sampling, seed=seed)
    answers = sample_answers(model, tokenizer, prompts, k, sampling)
    gold = [[judge.score(p, a) for a in texts] for p, texts in zip(prompts, answers)]
    differences = gold_differences(answers, gold)
    if not differences:
        raise ScratchError(
            f"all {k} answers of every prompt are identical, so there is nothing to rank; "
            "sample with a higher temperature or longer answers"
        )
    if tau is None:
        try:
            tau = tau_for_ceiling(differences, ceiling)
        except ScratchError as e:
            raise ScratchError(f"judge {judge.name} on {len(differences)} generated pairs: {e}") from None
    records = rank_answers(prompts, answers, judge, tau, seed=seed)
    all_gold = [g for scores in gold for g in scores]
    stats = SimulationStats(
        judge=judge.name,
        prompts=len(prompts),
        pairs=len(differences),
        identical=len(prompts) * k * (k - 1) // 2 - len(differences),
        tau=tau,
        ceiling=agreement_ceiling(differences, tau),
        agreement=gold_agreement(records),
        mean_gold=sum(all_gold) / len(all_gold),
    )
    return records, stats

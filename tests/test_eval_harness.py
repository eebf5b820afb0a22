"""lm-evaluation-harness cross-check: the harness and scratchlm's own scorer agree on the same checkpoint.

Fully offline: a local JSON Lines file behind a YAML task (`dataset_path: json`, absolute `data_files`),
with the Hugging Face libraries told not to reach the network.
"""

from __future__ import annotations

import json
import math
import os

import pytest

# Before `datasets` is imported anywhere: it reads these once, at import.
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness (optional extra) not installed")

from test_eval_lm import TEXT, tiny_setup  # noqa: E402, F401

from scratchlm.eval.generation import greedy_until  # noqa: E402
from scratchlm.eval.lm import evaluate_text  # noqa: E402
from scratchlm.eval.tasks import load_tasks, run_tasks  # noqa: E402
from scratchlm.model.folder import save_model  # noqa: E402

# ARC rows in the Hugging Face layout, with choices of different lengths so acc and acc_norm differ.
QUESTIONS = [
    ("Who speaks first?", ["First Citizen", "All", "the senate of Rome and its people"], 0),
    ("What do they say?", ["Speak, speak.", "Resolved. resolved.", "nothing"], 1),
    ("Rather to die than to", ["famish", "speak", "proceed any further"], 0),
    ("Before we proceed", ["any further", "hear me", "Citizen"], 0),
    ("You are all", ["resolved", "famish", "hear me speak, before we proceed any further"], 0),
    ("Hear me", ["speak", "die", "All"], 0),
]

TASK_YAML = """\
task: scratchlm_local_arc
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{choices.label.index(answerKey)}}}}"
doc_to_choice: "{{{{choices.text}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


LAMBADA_YAML = """\
task: scratchlm_local_lambada
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
output_type: loglikelihood
test_split: test
doc_to_text: "{{{{text.split(' ')[:-1]|join(' ')}}}}"
doc_to_target: "{{{{' '+text.split(' ')[-1]}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    model, tok = tiny_setup(context_length=32, seed=3)
    save_model(folder / "model", model, tok)
    return folder / "model", model, tok


def test_harness_and_scratchlm_scorer_agree_on_a_local_task(tmp_path, checkpoint):
    import scratchlm.eval.harness  # noqa: F401  (registers "scratchlm")

    ckpt, model, tok = checkpoint
    rows = [
        {"id": str(i), "question": q, "choices": {"text": c, "label": list("ABC")}, "answerKey": "ABC"[g]}
        for i, (q, c, g) in enumerate(QUESTIONS)
    ]
    data = tmp_path / "arc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    (tasks_dir / "local_arc.yaml").write_text(TASK_YAML.format(data=data, cache=tmp_path / "hf-cache"))
    lambada = tmp_path / "lambada.jsonl"
    lambada.write_text(
        "".join(json.dumps({"text": line}) + "\n" for line in TEXT.splitlines() if " " in line)
    )
    (tasks_dir / "local_lambada.yaml").write_text(
        LAMBADA_YAML.format(data=lambada, cache=tmp_path / "hf-cache")
    )

    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(
        model="scratchlm",
        model_args=f"ckpt={ckpt}",
        tasks=["scratchlm_local_arc", "scratchlm_local_lambada"],
        task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False),
        batch_size=4,
        random_seed=0,
    )
    harness = out["results"]["scratchlm_local_arc"]
    ours = run_tasks(model, tok, load_tasks([f"arc_easy={data}"]))["arc_easy"]
    assert ours["n"] == len(QUESTIONS)
    assert harness["acc,none"] == pytest.approx(ours["acc"], abs=1e-12)
    assert harness["acc_norm,none"] == pytest.approx(ours["acc_norm"], abs=1e-12)
    harness = out["results"]["scratchlm_local_lambada"]
    ours = run_tasks(model, tok, load_tasks([f"lambada={lambada}"]))["lambada"]
    assert ours["n"] == 6
    assert harness["acc,none"] == pytest.approx(ours["acc"], abs=1e-12)
    assert harness["perplexity,none"] == pytest.approx(ours["ppl"], rel=1e-9)


def test_harness_rolling_and_generation_use_the_same_scorer(checkpoint):
    from lm_eval.api.instance import Instance

    from scratchlm.eval.harness import ScratchLM

    ckpt, model, tok = checkpoint
    lm = ScratchLM(ckpt=str(ckpt))
    texts = [TEXT[:70], TEXT[70:200]]
    rolling = lm.loglikelihood_rolling(
        [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)], disable_tqdm=True
    )
    for text, logprob in zip(texts, rolling):
        figures = evaluate_text(model, tok, text)
        assert -logprob == pytest.approx(figures["loss"] * figures["tokens"], rel=1e-5)
    request = Instance("generate_until", {}, ("All:", {"until": ["\n"], "max_gen_toks": 5}), 0)
    (generated,) = lm.generate_until([request])
    assert generated == greedy_until(model, tok, ["All:"], ["\n", "<|endoftext|>"], max_new_tokens=5)[0]
    assert math.isfinite(lm.loglikelihood([Instance("loglikelihood", {}, ("All:", " Speak"), 0)])[0][0])

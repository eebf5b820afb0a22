"""Benchmark tasks: the readers of published formats, acc/acc_norm, built-in tasks, exact match."""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest
from test_eval_lm import TEXT, tiny_setup  # noqa: F401

from scratchlm.errors import ScratchError
from scratchlm.eval.generation import cut_at_stop, greedy_until
from scratchlm.eval.scoring import encode_pair, score_continuations
from scratchlm.eval.tasks import Choice, Generation, Task, evaluate_task, load_tasks
from scratchlm.eval.tasks.base import choice_requests, score_choices
from scratchlm.eval.tasks.builtin import next_line, shuffled


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_hellaswag_reader_formats_like_the_harness(tmp_path):
    row = {
        "ind": 4,
        "activity_label": "Removing ice from car",
        "ctx_a": "Then, the man writes over the snow covering the window of a car, and a woman wearing "
        "winter clothes smiles.",
        "ctx_b": "then",
        "endings": [
            ", the man adds wax to the windshield [title] and cuts it.",
            ", a person board a ski lift.",
        ],
        "label": 1,
    }
    (task,) = load_tasks([f"hellaswag={write_jsonl(tmp_path / 'hs.jsonl', [row])}"])
    ex = task.examples[0]
    assert ex.context == (
        "Removing ice from car: Then, the man writes over the snow covering the window of a car, and a woman "
        "wearing winter clothes smiles. Then"
    )
    assert ex.choices == [
        ", the man adds wax to the windshield. and cuts it.",
        ", a person board a ski lift.",
    ]
    assert ex.gold == 1


def test_arc_reader_reads_both_published_layouts(tmp_path):
    ai2 = {
        "id": "Mercury_1",
        "question": {
            "stem": "Which gas do plants take in?",
            "choices": [{"text": "oxygen", "label": "A"}, {"text": "carbon dioxide", "label": "B"}],
        },
        "answerKey": "B",
    }
    hf = {
        "id": "Mercury_1",
        "question": "Which gas do plants take in?",
        "choices": {"text": ["oxygen", "carbon dioxide"], "label": ["1", "2"]},
        "answerKey": "2",
    }
    a = load_tasks([f"arc_easy={write_jsonl(tmp_path / 'a.jsonl', [ai2])}"])[0]
    b = load_tasks([f"arc_challenge={write_jsonl(tmp_path / 'b.jsonl', [hf])}"])[0]
    assert (a.name, b.name) == ("arc_easy", "arc_challenge")
    want = Choice("Question: Which gas do plants take in?\nAnswer:", ["oxygen", "carbon dioxide"], 1)
    assert a.examples == b.examples == [want]


def test_piqa_reader_takes_labels_from_the_lst_file_beside_it(tmp_path):
    rows = [{"goal": "dry wet hands", "sol1": "use a towel", "sol2": "use water"}] * 2
    data = write_jsonl(tmp_path / "valid.jsonl", rows)
    with pytest.raises(ScratchError, match="valid-labels.lst"):
        load_tasks([f"piqa={data}"])
    (tmp_path / "valid-labels.lst").write_text("0\n1\n")
    (task,) = load_tasks([f"piqa={data}"])
    assert [ex.gold for ex in task.examples] == [0, 1]
    assert task.examples[0].context == "Question: dry wet hands\nAnswer:"


def test_lambada_reader_splits_off_the_last_word(tmp_path):
    (task,) = load_tasks([f"lambada={write_jsonl(tmp_path / 'l.jsonl', [{'text': 'he said to her hello'}])}"])
    assert (task.examples[0].context, task.examples[0].target) == ("he said to her", " hello")


def test_bad_task_specs_are_user_errors(tmp_path):
    with pytest.raises(ScratchError, match="unknown task format"):
        load_tasks(["squad=x.jsonl"])
    with pytest.raises(ScratchError, match="not found"):
        load_tasks([f"hellaswag={tmp_path / 'missing.jsonl'}"])
    (tmp_path / "bad.jsonl").write_text('{"context": "a"}\n')
    with pytest.raises(ScratchError, match="no field 'choices'"):
        load_tasks([f"mc={tmp_path / 'bad.jsonl'}"])
    (tmp_path / "gold.jsonl").write_text('{"context": "a", "choices": ["b", "c"], "gold": 2}\n')
    with pytest.raises(ScratchError, match="answer 2 but 2 choices"):
        load_tasks([f"mc={tmp_path / 'gold.jsonl'}"])
    row = {"activity_label": "a", "ctx_a": "b", "ctx_b": "c", "endings": ["d", "e"], "label": ""}
    with pytest.raises(ScratchError, match="unlabeled"):
        load_tasks([f"hellaswag={write_jsonl(tmp_path / 'test.jsonl', [row])}"])
    with pytest.raises(ScratchError, match="needs validation text"):
        load_tasks(["builtin"])


def test_acc_and_acc_norm_follow_the_harness_definition():
    """Against numpy's argmax (the harness's), length-normalized by characters of the choice alone."""
    rng = np.random.default_rng(0)
    examples = [
        Choice("q", ["a" * int(k) for k in rng.integers(1, 30, 4)], int(rng.integers(4))) for _ in range(50)
    ]
    task = Task("t", examples)
    lls = rng.normal(-20, 8, 200).round(0)  # rounding makes ties, which go to the first choice
    got = score_choices(task, list(lls))
    lengths = np.array([[len(c) for c in ex.choices] for ex in examples], dtype=float)
    gold = np.array([ex.gold for ex in examples])
    lls = lls.reshape(50, 4)
    assert got["acc"] == np.mean(np.argmax(lls, axis=1) == gold)
    assert got["acc_norm"] == np.mean(np.argmax(lls / lengths, axis=1) == gold)
    assert got["acc_centered"] == pytest.approx((got["acc"] - 0.25) / 0.75)
    assert choice_requests(task)[:2] == [
        ("q", " " + examples[0].choices[0]),
        ("q", " " + examples[0].choices[1]),
    ]


def test_evaluate_task_scores_choices_by_their_loglikelihood():
    model, tok = tiny_setup()
    examples = [
        Choice("First Citizen:", ["Speak, speak.", "Resolved.", "hear me"], 0),
        Choice("All:", ["x", "y"], 1),
    ]
    got = evaluate_task(model, tok, Task("t", examples))
    lls = [
        ll
        for ll, _ in score_continuations(
            model, [encode_pair(tok, c, " " + x) for c, x in choice_requests_plain(examples)]
        )
    ]
    first, second = lls[:3], lls[3:]
    want = (int(np.argmax(first) == 0) + int(np.argmax(second) == 1)) / 2
    assert got["acc"] == want and got["n"] == 2


def choice_requests_plain(examples):
    return [(ex.context, choice) for ex in examples for choice in ex.choices]


def test_builtin_tasks_are_deterministic_and_drawn_from_the_given_text_only():
    lines = "".join(f"Citizen {k}:\nSpeak, speak {k}.\nBefore we proceed {k}\n\n" for k in range(12))
    a, b = next_line([lines], n=10, seed=1), next_line([lines], n=10, seed=1)
    assert a.examples == b.examples and len(a.examples) == 10
    assert next_line([lines], n=10, seed=2).examples != a.examples
    text_lines = set(lines.split("\n"))
    for ex in a.examples:
        assert len(ex.choices) == 4 and len(set(ex.choices)) == 4
        assert set(ex.choices) <= text_lines
        assert ex.context + ex.choices[ex.gold] in lines  # the true line really follows its context
    repeated = "\n".join(f"A:\nline number {k}\nand its end {k}" for k in range(30))
    for ex in next_line([repeated], n=20).examples:  # a context-blind "pick A:" must not beat chance
        assert "A:" not in ex.choices
    s = shuffled([lines], n=5)
    for ex in s.examples:
        real, fake = ex.choices[ex.gold], ex.choices[1 - ex.gold]
        assert real in lines and real != fake and len(real) == len(fake)
        assert Counter(real.split()) == Counter(fake.split())
        assert re.sub(r"\S+", "w", real) == re.sub(r"\S+", "w", fake)  # whitespace untouched
    assert [t.name for t in load_tasks(["builtin"], lambda: [lines], n=3)] == ["next_line", "shuffled"]


def test_generative_exact_match_after_stop_strings():
    model, tok = tiny_setup()
    prompts = ["First Citizen:\n", "All:"]
    raw = greedy_until(model, tok, prompts, [], max_new_tokens=6)
    cut = greedy_until(model, tok, prompts, [raw[0][2:4]] if len(raw[0]) > 3 else ["\n"], max_new_tokens=6)
    assert raw[0].startswith(cut[0]) and len(cut[0]) <= len(raw[0])
    right = Task("g", [Generation(p, out) for p, out in zip(prompts, raw)], stop=[], max_new_tokens=6)
    wrong = Task("g", [Generation(p, out + "zz") for p, out in zip(prompts, raw)], stop=[], max_new_tokens=6)
    assert evaluate_task(model, tok, right)["exact_match"] == 1.0
    assert evaluate_task(model, tok, wrong)["exact_match"] == 0.0
    assert cut_at_stop("abc\ndef.", ["\n", "."]) == "abc"


def test_a_briefly_trained_model_beats_chance_on_the_shuffled_task():
    """300 steps of a 1-layer character model on Tiny Shakespeare's training text: the built-in task
    drawn from the validation text must show it learned word order (chance is 0.5)."""
    import torch
    import torch.nn.functional as F
    from conftest import shakespeare_path
    from test_eval_lm import tiny_model

    from scratchlm.tokenizer import train_char

    path = shakespeare_path()
    if path is None:
        pytest.skip("Tiny Shakespeare mirror ($SCRATCHLM_DATA) absent")
    text = path.read_text()
    cut = int(len(text) * 0.9)  # the data stage's split: the last 10% is validation
    tok = train_char(text)
    ids = torch.tensor(tok.encode_ordinary(text[:cut][:200_000]))
    model = tiny_model(tok.vocab_size, context_length=32).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        starts = torch.randint(0, len(ids) - 33, (16,), generator=generator)
        x = torch.stack([ids[s : s + 32] for s in starts])  # (16, 32)
        y = torch.stack([ids[s + 1 : s + 33] for s in starts])  # (16, 32)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    got = evaluate_task(model.eval(), tok, shuffled([text[cut:]], n=100))
    assert got["n"] == 100 and got["acc"] >= 0.65  # 0.71 measured; chance 0.5 +- 0.05

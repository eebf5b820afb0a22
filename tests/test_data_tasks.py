"""Built-in instruction tasks: determinism, fixed disjoint splits, exact answers, rewards, specs, alphabet."""

from __future__ import annotations

import pytest
from support.paths import shakespeare_path

from scratchlm.data import load_corpus
from scratchlm.data.tasks import (
    Arithmetic,
    Strings,
    alphabet,
    answer_text,
    get_task,
    is_heldout,
    names_a_speaker,
    parse_spec,
    speakers,
)
from scratchlm.data.tasks import strings as strings_module
from scratchlm.errors import ScratchError

needs_shakespeare = pytest.mark.skipif(shakespeare_path() is None, reason="Tiny Shakespeare mirror absent")

# Hermetic specs first (no corpus); the Shakespeare ones only where the mirror is present.
EXACT = [
    "arithmetic:digits=2,op=+",
    "arithmetic:op=-",
    "strings:words=builtin",
    "strings:kind=count,words=builtin",
]
ALL = [
    *EXACT,
    pytest.param("strings:kind=reverse,max_len=8,words=shakespeare", marks=needs_shakespeare),
    pytest.param("dialogue", marks=needs_shakespeare),
]


def questions(conversations):
    return [c[-2]["content"] for c in conversations]


@pytest.mark.parametrize("spec", ALL)
def test_examples_are_deterministic_and_prefix_stable(spec):
    task = get_task(spec)
    a = task.examples("train", 60, seed=3)
    assert a == get_task(spec).examples("train", 60, seed=3)
    assert task.examples("train", 20, seed=3) == a[:20]
    assert task.examples("train", 60, seed=4) != a
    assert len(set(questions(a))) == 60  # distinct (a pass holds every question once)
    for conversation in a:
        assert [m["role"] for m in conversation] == ["user", "assistant"]


@pytest.mark.parametrize("spec", ALL)
def test_train_and_heldout_never_share_a_question(spec):
    task = get_task(spec)
    train = {q for seed in (0, 1) for q in questions(task.examples("train", 300, seed=seed))}
    heldout = {q for seed in (0, 1) for q in questions(task.examples("heldout", 50, seed=seed))}
    assert heldout and not train & heldout


def test_the_heldout_split_is_fixed_by_the_question_alone():
    # Every 1-digit sum, enumerated: the sampler finds exactly the hashed held-out set, and no more.
    task = Arithmetic(digits=1, op="+")
    all_questions = {f"{a}+{b}=" for a in range(10) for b in range(10)}
    expected = {q for q in all_questions if is_heldout(f"arithmetic|{q}")}
    assert 5 < len(expected) < 40
    assert set(questions(task.examples("heldout", len(expected), seed=7))) == expected
    with pytest.raises(ScratchError, match=f"has {len(expected)} heldout questions, fewer than"):
        task.examples("heldout", len(expected) + 1)
    # Training comes in passes, like epochs: each pass every training question once, in a new order.
    size = 100 - len(expected)
    train = questions(task.examples("train", 3 * size, seed=7))
    passes = [train[i * size : (i + 1) * size] for i in range(3)]
    assert all(set(p) == all_questions - expected for p in passes) and passes[0] != passes[1]
    # The same question is held out whatever the digit count that produced it.
    wide = Arithmetic(digits=3, op="+").examples("train", 3000)
    assert not set(questions(wide)) & expected


def test_arithmetic_answers_are_the_true_sums_and_differences():
    for op, digits in (("+", 1), ("+", 2), ("-", 2), ("+", 3), ("-", 3)):
        for conversation in Arithmetic(digits=digits, op=op).examples("train", 60 if digits == 1 else 200):
            q, answer = conversation[0]["content"], conversation[1]["content"]
            assert q.endswith("=")
            a, b = (int(x) for x in q[:-1].split(op))
            assert 0 <= a < 10**digits and 0 <= b < 10**digits
            assert int(answer) == (a + b if op == "+" else a - b)
            assert str(int(answer)) == answer and int(answer) >= 0


def test_strings_answers_are_right():
    for kind in ("reverse", "upper", "count", "sort"):
        for conversation in Strings(kind=kind, max_len=8, words="builtin").examples("train", 100):
            q, answer = conversation[0]["content"], conversation[1]["content"]
            head, word = q.split(": ")
            assert word.isascii() and word.isalpha() and word.islower() and len(word) <= 8
            if kind == "reverse":
                assert head == "reverse" and "".join(reversed(word)) == answer
            elif kind == "upper":
                assert answer == word.upper()
            elif kind == "sort":
                assert list(answer) == sorted(word)
            else:
                letter = head.removeprefix("count ")
                assert int(answer) == sum(ch == letter for ch in word)


@pytest.mark.parametrize("spec", EXACT)
def test_check_and_reward(spec):
    task = get_task(spec)
    for conversation in task.examples("heldout", 30):
        prompt, answer = conversation[:-1], conversation[-1]["content"]
        assert task.check(conversation, answer) and task.check(prompt, answer)
        assert task.check(prompt[-1]["content"], f"  {answer} <|end|>\n")
        assert task.reward(prompt, answer + "<|end|>") == 1.0
        assert task.reward([{"role": "system", "content": "Be exact."}, *prompt], answer) == 1.0
        for wrong in (answer + "1", answer[:-1], "", f"{answer}<|end|>x", f"<|end|>{answer}"):
            assert not task.check(prompt, wrong)
            assert task.reward(prompt, wrong) == 0.0


def test_answer_text_rule():
    assert answer_text(" 46 \n") == "46"
    assert answer_text("46<|end|>") == answer_text("46 <|end|> ") == "46"
    assert answer_text("46<|end|><|end|>") == "46<|end|>"  # one end of turn only


def test_checking_text_that_is_not_the_tasks_question_is_an_error():
    with pytest.raises(ScratchError, match="not an arithmetic question"):
        Arithmetic().check("What is 1 + 2?", "3")
    with pytest.raises(ScratchError, match="not a strings question"):
        Strings(words="builtin").check("reverse: Crown", "nworC")
    with pytest.raises(ScratchError, match="no user message"):
        Arithmetic().reward([{"role": "system", "content": "x"}], "3")


@needs_shakespeare
def test_dialogue_replies_name_a_speaker_and_fit():
    task = get_task("dialogue:user_chars=120,reply_chars=90")
    text = load_corpus("shakespeare").documents[0]
    val_text = load_corpus("shakespeare").split()[1][0]
    names = speakers()
    assert {"ROMEO", "JULIET", "First Citizen", "Nurse"} <= names
    for split, n in (("train", 200), ("heldout", 100)):
        for user, reply in ((c[0]["content"], c[1]["content"]) for c in task.examples(split, n)):
            assert len(user) <= 120 and len(reply) <= 90
            assert names_a_speaker(reply) and names_a_speaker(user)
            assert reply.split("\n")[0][:-1] in names
            # Whole lines: the reply is the start of a speech, the user's text the end of one.
            assert f"\n\n{reply}\n" in text
            body = user.split("\n", 1)[1]
            assert f"\n{body}\n\n" in text
            if split == "heldout":
                assert reply in val_text


@needs_shakespeare
def test_dialogue_heldout_never_appears_in_train():
    task = get_task("dialogue")
    train = {tuple(m["content"] for m in c) for c in task.examples("train", 3000)}
    heldout = [tuple(m["content"] for m in c) for c in task.examples("heldout", 500)]
    assert not train & set(heldout)
    with pytest.raises(ScratchError, match="ask for at most"):
        task.examples("heldout", 10**6)
    # Training comes in reshuffled passes, so any number can be asked for.
    many = task.examples("train", 10_000)
    size = len({tuple(m["content"] for m in c) for c in many})
    assert len(many) == 10_000 and size < 10_000 and many[:size] != many[size : 2 * size]


@needs_shakespeare
def test_names_a_speaker():
    assert names_a_speaker("ROMEO:\nBut soft!")
    assert names_a_speaker("  First Citizen:\nSpeak, speak.<|end|>\n")
    assert get_task("dialogue").names_a_speaker("JULIET:\nAy me!")
    for reply in ("ZORRO:\nEn garde!", "ROMEO says hi", "ROMEO", "romeo:\nhi", "", ":\nhi"):
        assert not names_a_speaker(reply)


def test_parse_spec():
    assert parse_spec("arithmetic") == ("arithmetic", {})
    assert parse_spec("arithmetic:digits=2,op=+") == ("arithmetic", {"digits": "2", "op": "+"})
    assert parse_spec("strings:kind=reverse, max_len=8") == ("strings", {"kind": "reverse", "max_len": "8"})
    task = get_task("arithmetic:digits=2,op=-")
    assert task == Arithmetic(digits=2, op="-") and get_task(task.spec) == task
    assert get_task("strings:kind=reverse,max_len=8,words=builtin") == Strings("reverse", 8, "builtin")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("algebra", r"unknown task 'algebra'; known tasks: arithmetic, dialogue, strings"),
        ("arithmetic:base=2", r"unknown parameter 'base'; arithmetic takes digits, op"),
        ("arithmetic:digits=two", r"digits must be int, got 'two'"),
        ("arithmetic:digits", r"'digits' is not key=value"),
        ("arithmetic:digits=2,digits=3", r"digits is given twice"),
        ("arithmetic:op=*", r"op must be one of \+ -"),
        ("arithmetic:digits=0", r"digits must be at least 1"),
        ("strings:kind=shout", r"kind must be one of"),
        ("strings:words=latin", r"words must be one of"),
        ("strings:max_len=0,words=builtin", r"no builtin word has at most 0 letters"),
        ("dialogue:reply_chars=5", r"reply_chars must be at least 20"),
    ],
)
def test_spec_errors_are_one_line_and_name_the_problem(spec, message):
    with pytest.raises(ScratchError, match=message) as info:
        get_task(spec)
    assert "\n" not in str(info.value)


def test_unknown_split_is_an_error():
    with pytest.raises(ScratchError, match="unknown split 'test'"):
        Arithmetic().examples("test", 3)


@pytest.mark.parametrize("spec", ALL)
def test_alphabet_covers_every_text(spec):
    task = get_task(spec)
    chars = alphabet([spec])
    for split in ("train", "heldout"):
        for conversation in task.examples(split, 100):
            for message in conversation:
                assert set(message["content"]) <= chars, message["content"]


def test_alphabet_unions_tasks_and_has_the_digits():
    both = alphabet(["arithmetic", "strings:words=builtin"])
    assert set("0123456789+-=") <= both and set("azAZ: ") <= both
    assert both == alphabet(["arithmetic"]) | alphabet(["strings"])


def test_auto_words_fall_back_to_the_builtin_list_offline(monkeypatch):
    monkeypatch.setattr(strings_module, "locate", lambda name: (None, "download"))
    strings_module._short_words.cache_clear()
    try:
        assert Strings(words="auto").word_list() == Strings(words="builtin").word_list()
    finally:
        strings_module._short_words.cache_clear()

"""The label page's API through FastAPI's TestClient: rankings append, undo, resume, a torn tail repaired,
two tabs never get or write one prompt, and bad input gives one line; `scratchlm label` serves it.

The model is a tiny "babbler" (as in test_chat.py): a constant distribution over characters, never a
special token, so every answer is `max_new_tokens` random characters, and answers differ between draws.
"""

from __future__ import annotations

import functools
import json
import threading

import pytest
import torch
from fastapi.testclient import TestClient

from scratchlm.align.preferences import append_record, read_preferences
from scratchlm.align.simulate import sample_answers
from scratchlm.cli import main
from scratchlm.errors import ScratchError
from scratchlm.generate.config import SamplingConfig
from scratchlm.model import ModelConfig, Transformer
from scratchlm.model.folder import save_model
from scratchlm.serve.label_app import LabelQueue, create_app
from scratchlm.tokenizer import CHAT_SPECIAL_TOKENS, ENDOFTEXT, train_char

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 ,.?!<>/=+-\"'"
PROMPTS = [[{"role": "user", "content": text}] for text in ("hello there", "how are you?", "say yes", "bye")]
K = 3


def chat_tokenizer(chat_tokens: bool = True):
    return train_char([ALPHABET], special_tokens=(ENDOFTEXT, *CHAT_SPECIAL_TOKENS) if chat_tokens else ())


def babbler(tokenizer, context: int = 64) -> Transformer:
    """Every step samples one fixed distribution over the characters (LayerNorm outputs a constant)."""
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size, context_length=context, n_layers=1, d_model=16, n_heads=2,
        d_ff=32, norm="layernorm", bias=True, tie_embeddings=False,
    )  # fmt: skip
    model = Transformer(config)
    with torch.no_grad():
        model.final_norm.weight.zero_()
        model.final_norm.bias.zero_()
        model.final_norm.bias[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[:, 0] = 0.5 * torch.randn(tokenizer.vocab_size)  # the logits, every step
        for index in tokenizer.special_tokens.values():
            model.lm_head.weight[index, 0] = -100.0
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer():
    return chat_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return babbler(tokenizer)


@pytest.fixture(scope="module")
def sample(model, tokenizer):
    sampling = SamplingConfig(max_new_tokens=8, seed=0)
    return functools.partial(sample_answers, model, tokenizer, k=K, sampling=sampling, batch_size=1)


def client_for(out, sample, prompts=PROMPTS, **kwargs) -> tuple[LabelQueue, TestClient]:
    queue = LabelQueue(prompts, out, sample, K, **kwargs)
    return queue, TestClient(create_app(queue))


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_ranking_is_appended_best_first_and_the_next_prompt_follows(tmp_path, sample):
    out = tmp_path / "prefs.jsonl"
    _, client = client_for(out, sample)
    shown = client.get("/api/next", params={"tab": "a"}).json()
    assert shown["state"] == "prompt" and shown["index"] == 0 and shown["prompt"] == PROMPTS[0]
    assert len(shown["answers"]) == K and (shown["ranked"], shown["total"]) == (0, 4)
    again = client.get("/api/next", params={"tab": "a"}).json()
    assert again == shown  # a reload: the same prompt, the same answers
    done = client.post("/api/rank", json={"tab": "a", "index": 0, "order": [2, 0, 1]}).json()
    assert (done["state"], done["ranked"], done["total"]) == ("ranked", 1, 4)
    answers = shown["answers"]
    assert lines(out) == [
        {"prompt": PROMPTS[0], "responses": [answers[2], answers[0], answers[1]], "annotator": "human"}
    ]
    assert read_preferences(out).rankings == 1  # the file is the format's, through its one owner
    assert client.get("/api/next", params={"tab": "a"}).json()["index"] == 1
    assert "textContent" in client.get("/").text and "innerHTML" not in client.get("/").text


def test_answers_are_seeded_by_prompt_so_a_restart_shows_the_same_ones(tmp_path, sample):
    _, first = client_for(tmp_path / "a.jsonl", sample)
    _, second = client_for(tmp_path / "b.jsonl", sample)
    shown = [first.get("/api/next", params={"tab": "t"}).json()["answers"] for _ in range(2)]
    assert shown[0] == shown[1] == second.get("/api/next", params={"tab": "u"}).json()["answers"]
    assert len(set(shown[0])) == K  # K different draws, not one answer K times


def test_undo_removes_the_last_ranking_and_gives_its_prompt_back(tmp_path, sample):
    out = tmp_path / "prefs.jsonl"
    _, client = client_for(out, sample)
    assert client.post("/api/undo", json={"tab": "a"}).json() == {
        "detail": "nothing to undo: the file holds no rankings"
    }
    shown = []
    for index in range(2):
        shown.append(client.get("/api/next", params={"tab": "a"}).json())
        client.post("/api/rank", json={"tab": "a", "index": index, "order": [0, 1, 2]})
    undone = client.post("/api/undo", json={"tab": "a"}).json()
    assert (undone["state"], undone["index"], undone["ranked"]) == ("undone", 1, 1)
    assert [r["prompt"] for r in lines(out)] == [PROMPTS[0]]
    assert client.get("/api/next", params={"tab": "a"}).json() == shown[1]  # the same answers to redo


def test_a_restart_resumes_where_the_file_stops(tmp_path, sample):
    out = tmp_path / "prefs.jsonl"
    append_record(out, {"prompt": PROMPTS[0], "responses": ["x", "y"]})  # ranked in an earlier session
    append_record(out, {"prompt": "bye", "responses": ["x", "y"]})  # a string prompt is one user turn
    queue, client = client_for(out, sample)
    assert queue.progress() == (2, 4) and not queue.repaired
    indices = []
    for _ in range(2):
        indices.append(client.get("/api/next", params={"tab": "a"}).json()["index"])
        client.post("/api/rank", json={"tab": "a", "index": indices[-1], "order": [1, 0, 2]})
    assert indices == [1, 2]
    final = client.get("/api/next", params={"tab": "a"}).json()
    assert final == {"ranked": 4, "total": 4, "k": K, "state": "done", "message": "all 4 prompts are ranked"}


def test_a_torn_last_line_is_dropped_when_the_page_starts(tmp_path, sample):
    out = tmp_path / "prefs.jsonl"
    append_record(out, {"prompt": PROMPTS[0], "responses": ["x", "y"]})
    with open(out, "ab") as f:
        f.write(b'{"prompt": "how are you?", "respon')  # a crash in the middle of the next append
    queue, _ = client_for(out, sample)
    assert queue.repaired and queue.progress() == (1, 4)
    assert [r["prompt"] for r in lines(out)] == [PROMPTS[0]]


def test_two_tabs_never_get_or_write_the_same_prompt(tmp_path, sample):
    out = tmp_path / "prefs.jsonl"
    now = [0.0]
    _, client = client_for(out, sample, lease_seconds=60, clock=lambda: now[0])
    a = client.get("/api/next", params={"tab": "a"}).json()
    b = client.get("/api/next", params={"tab": "b"}).json()
    assert (a["index"], b["index"]) == (0, 1)
    stolen = client.post("/api/rank", json={"tab": "b", "index": 0, "order": [0, 1, 2]})
    assert stolen.status_code == 409 and "open in another tab" in stolen.json()["detail"]
    assert client.post("/api/rank", json={"tab": "a", "index": 0, "order": [0, 1, 2]}).status_code == 200
    twice = client.post("/api/rank", json={"tab": "b", "index": 0, "order": [0, 1, 2]})
    assert twice.status_code == 409 and "already ranked" in twice.json()["detail"]
    # A tab that went quiet loses its prompt once its lease lapses; until then the other tab waits.
    client.get("/api/next", params={"tab": "a"})  # a now holds prompt 2
    client.get("/api/next", params={"tab": "c"})  # c holds prompt 3
    busy = client.get("/api/next", params={"tab": "d"}).json()
    assert busy["state"] == "busy" and busy["message"] == "3 prompts left, open in other tabs"
    now[0] = 61.0
    assert client.get("/api/next", params={"tab": "d"}).json()["index"] == 1  # b's lease has lapsed
    assert [r["prompt"] for r in lines(out)] == [PROMPTS[0]]


def test_tabs_racing_in_threads_write_each_prompt_once(tmp_path):
    out = tmp_path / "prefs.jsonl"
    prompts = [[{"role": "user", "content": f"prompt {i}"}] for i in range(40)]

    def fake_sample(batch, start):  # the race is in the queue, not the model: cheap answers
        return [[f"{start}-{j}" for j in range(K)] for _ in batch]

    queue = LabelQueue(prompts, out, fake_sample, K)
    client = TestClient(create_app(queue))
    refused = []

    def tab(name):
        while True:
            shown = client.get("/api/next", params={"tab": name}).json()
            if shown["state"] != "prompt":
                return
            # Every tab also tries the prompt after its own: refused unless nobody holds it.
            for index in (shown["index"], (shown["index"] + 1) % len(prompts)):
                reply = client.post("/api/rank", json={"tab": name, "index": index, "order": [0, 1, 2]})
                refused.append(reply.status_code == 409)

    threads = [threading.Thread(target=tab, args=(f"tab{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    written = [r["prompt"][0]["content"] for r in lines(out)]
    assert sorted(written) == sorted(p[0]["content"] for p in prompts)  # each once, none twice
    assert any(refused)


@pytest.mark.parametrize(
    "body, status, message",
    [
        (
            {"tab": "a", "index": 0, "order": [0, 0, 1]},
            400,
            "order [0, 0, 1]: list the answers 0-2 once each",
        ),
        ({"tab": "a", "index": 0, "order": [0, 1]}, 400, "order [0, 1]: list the answers 0-2 once each"),
        ({"tab": "a", "index": 9, "order": [0, 1, 2]}, 400, "prompt 9 does not exist: there are 4 prompts"),
        ({"tab": "a", "index": 2, "order": [0, 1, 2]}, 409, "prompt 2 has not been shown yet"),
    ],
)
def test_a_bad_ranking_is_refused_in_one_line(tmp_path, sample, body, status, message):
    out = tmp_path / "prefs.jsonl"
    _, client = client_for(out, sample)
    client.get("/api/next", params={"tab": "a"})
    reply = client.post("/api/rank", json=body)
    assert reply.status_code == status and reply.json()["detail"].startswith(message)
    assert "\n" not in reply.json()["detail"] and not out.exists()
    assert client.get("/api/next", params={"tab": ""}).status_code == 422


def test_a_bad_k_is_one_line(tmp_path, model, tokenizer, sample):
    with pytest.raises(ScratchError, match=r"^k = 1: a ranking needs at least two answers per prompt"):
        sample_answers(model, tokenizer, PROMPTS, 1, SamplingConfig(max_new_tokens=4))
    for k in (1, 10):
        with pytest.raises(ScratchError, match=rf"^--k {k}: the label page ranks 2 to 9 answers per prompt"):
            LabelQueue(PROMPTS, tmp_path / "prefs.jsonl", sample, k)


@pytest.fixture(scope="module")
def model_dir(tokenizer, model, tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("label") / "model", model, tokenizer)


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


def test_the_command_serves_the_page_over_the_file(tmp_path, model_dir, prompts_file, monkeypatch, capsys):
    import uvicorn

    out = tmp_path / "prefs.jsonl"
    append_record(out, {"prompt": PROMPTS[3], "responses": ["x", "y"]})
    out.write_bytes(out.read_bytes() + b'{"prompt": "torn')
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.update(app=app, **kwargs))
    argv = ["label", "--ckpt", str(model_dir), "--prompts", str(prompts_file), "--out", str(out)]
    assert main([*argv, "--k", "3", "--max-new-tokens", "6", "--port", "8123"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        f"{out}: dropped a torn last line (a ranking whose write was cut short; redo it)",
        "label page: http://127.0.0.1:8123/  (1 / 4 ranked; Ctrl-C stops)",
    ]
    assert (served["host"], served["port"]) == ("127.0.0.1", 8123)
    shown = TestClient(served["app"]).get("/api/next", params={"tab": "a"}).json()
    assert len(shown["answers"]) == 3 and all(len(a) == 6 for a in shown["answers"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--k", "1"], "k = 1: a ranking needs at least two answers per prompt; give --k 2 or more"),
        (["--k", "12"], "--k 12: the label page ranks 2 to 9 answers per prompt; give --k 2-9"),
        (["--max-new-tokens", "60"], "prompt 0 is 14 tokens; with 60 new tokens it outgrows the model's"),
        (["--judge", "nonsense"], "unknown judge 'nonsense'; use sentiment or exact:TASK_SPEC"),
    ],
)
def test_bad_command_lines_are_one_line_and_exit_2(tmp_path, model_dir, prompts_file, capsys, extra, message):
    argv = ["label", "--ckpt", str(model_dir), "--prompts", str(prompts_file), "--out", str(tmp_path / "p")]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"scratchlm: error: {message}") and err.count("\n") == 1

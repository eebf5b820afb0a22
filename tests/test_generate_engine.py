"""The decoding engine against its slow twins: cache vs full recompute, batch vs one prompt at a time;
the step iterator's log-probabilities against a full recompute and a hand computation."""

from __future__ import annotations

import logging

import pytest
import torch

from scratchlm.errors import ScratchError
from scratchlm.finetune.lora import LoRAConfig, apply_lora
from scratchlm.generate import SamplingConfig, decode_steps, generate, generate_ids, generate_stream
from scratchlm.generate.packed import PackedDecoder, can_pack
from scratchlm.generate.stream import TextStream
from scratchlm.model import ModelConfig, Transformer


class ByteTokenizer:
    """UTF-8 bytes as tokens (0..255) plus <|endoftext|> = 256: multi-byte characters span tokens."""

    vocab_size = 257
    eot_id = 256
    special_tokens = {"<|endoftext|>": 256}

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def tiny_model(context=32, seed=0, **kw) -> Transformer:
    torch.manual_seed(seed)
    # A large init spreads the random model's logits, so greedy decoding wanders instead of repeating.
    shape = dict(vocab_size=257, context_length=context, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2)
    cfg = ModelConfig(**{**shape, "init_std": 0.3, **kw})
    return Transformer(cfg).eval()


PROMPTS = [[5, 17, 99], [200, 3, 3, 41, 8, 120, 7], [64]]


@pytest.mark.parametrize("pos_encoding", ["rope", "learned"])
def test_cache_equals_full_recompute_across_window_slides(pos_encoding, caplog):
    model = tiny_model(pos_encoding=pos_encoding)
    cfg = SamplingConfig(max_new_tokens=70, temperature=0)  # 7 + 70 > 32: the window slides several times
    with caplog.at_level(logging.WARNING, logger="scratchlm.generate.engine"):
        fast = generate_ids(model, [PROMPTS[1]], cfg, use_cache=True)
    assert caplog.text.count("filled the model's context") == 1  # one notice per call, not per slide
    slow = generate_ids(model, [PROMPTS[1]], cfg, use_cache=False)
    assert fast == slow
    assert len(fast[0]) == 70 and len(set(fast[0])) > 5


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_batched_rows_equal_prompts_alone(penalty):
    model = tiny_model()
    cfg = SamplingConfig(max_new_tokens=20, temperature=0, repetition_penalty=penalty)
    batched = generate_ids(model, PROMPTS, cfg)
    alone = [generate_ids(model, [p], cfg)[0] for p in PROMPTS]
    assert batched == alone
    assert generate_ids(model, PROMPTS, cfg, use_cache=False) == alone


def test_eot_ends_a_row_and_others_go_on():
    model = tiny_model()
    cfg = SamplingConfig(max_new_tokens=12, temperature=0)
    free = generate_ids(model, PROMPTS, cfg)
    eot = free[0][4]  # pretend the 5th token of row 0 is end-of-text
    cut = generate_ids(model, PROMPTS, cfg, eot_id=eot)
    for row, ids in zip(free, cut):
        want = row[: row.index(eot)] if eot in row else row
        assert ids == want


def test_seed_reproduces_sampling():
    model = tiny_model()
    cfg = SamplingConfig(max_new_tokens=15, temperature=1.5, top_k=50, top_p=0.95, seed=7)
    a, b = generate_ids(model, PROMPTS, cfg), generate_ids(model, PROMPTS, cfg)
    c = generate_ids(model, PROMPTS, SamplingConfig(max_new_tokens=15, temperature=1.5, seed=8))
    assert a == b and a != c


def test_long_prompt_truncated_from_left_with_notice_or_refused(caplog):
    model = tiny_model(context=16)
    long = list(range(40, 70))  # 30 tokens > 16
    cfg = SamplingConfig(max_new_tokens=5, temperature=0)
    with caplog.at_level(logging.WARNING, logger="scratchlm.generate.engine"):
        got = generate_ids(model, [long], cfg)
    assert "longer than the model's context" in caplog.text
    assert got == generate_ids(model, [long[-16:]], cfg)
    with pytest.raises(ScratchError, match="context"):
        generate_ids(model, [long], SamplingConfig(max_new_tokens=5, truncate="error"))


def test_text_stop_string_and_streaming_pieces():
    model, tok = tiny_model(), ByteTokenizer()
    base = SamplingConfig(max_new_tokens=30, temperature=0, stop_at_eot=False)
    free = generate(model, tok, ["Hello", "é"], base)
    stop = free[0][6:9]  # three bytes: the stop string arrives over several tokens
    assert len(tok.encode(stop)) >= 3
    cfg = SamplingConfig(max_new_tokens=30, temperature=0, stop=[stop], stop_at_eot=False)
    got = generate(model, tok, ["Hello", "é"], cfg)
    assert got[0] == free[0][: free[0].find(stop)]
    assert got[1] == (free[1][: free[1].find(stop)] if stop in free[1] else free[1])
    steps = list(generate_stream(model, tok, ["Hello", "é"], cfg))
    for row in (0, 1):
        assert "".join(s.texts[row] for s in steps) == got[row]
    # Row 0 finishes at its stop string and says so at every later step, with no more text.
    first = next(i for i, s in enumerate(steps) if s.finished[0])
    assert first < len(steps) - 1 and not steps[first].finished[1]
    assert all(s.finished[0] and s.texts[0] == "" for s in steps[first + 1 :])
    assert not any(s.finished[0] for s in steps[:first])
    assert generate(model, tok, ["Hello"], base, use_cache=False) == free[:1]


def test_steps_tokens_equal_generate_ids():
    model = tiny_model()
    cfg = SamplingConfig(max_new_tokens=12, temperature=0.8, top_k=40, seed=2)
    want = generate_ids(model, PROMPTS, cfg)
    eot = want[1][3]  # an end-of-text that ends row 1 early (and any other row that samples it)
    want = generate_ids(model, PROMPTS, cfg, eot_id=eot)
    got: list[list[int]] = [[] for _ in PROMPTS]
    for step in decode_steps(model, None, PROMPTS, cfg, eot_id=eot):
        assert step.texts == ["", "", ""]
        for row, tok in enumerate(step.token_ids):
            if not step.finished[row]:
                got[row].append(tok)
    assert got == want and len(want[1]) == 3


def _full_recompute_logits(model, prompt: list[int], new: list[int]) -> torch.Tensor:
    """Logits predicting each new token, from one forward over the whole sequence: (len(new), V)."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + new]))[0].float()  # (T, V)
    return logits[len(prompt) - 1 : len(prompt) - 1 + len(new)]


def test_raw_logprobs_equal_full_recompute_for_a_padded_batch():
    model = tiny_model()  # random weights (init_std 0.3, fixed seed): logits far from uniform
    cfg = SamplingConfig(max_new_tokens=20, temperature=1.0, seed=4)  # 7 + 20 < 32: no window slide
    steps = list(decode_steps(model, None, PROMPTS, cfg))
    assert len(steps) == 20
    for row, prompt in enumerate(PROMPTS):
        new = [s.token_ids[row] for s in steps]
        want = torch.log_softmax(_full_recompute_logits(model, prompt, new), -1)  # (20, V)
        want = want.gather(-1, torch.tensor(new)[:, None]).squeeze(-1)  # (20,)
        got = torch.stack([s.raw_logprobs[row] for s in steps])
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert want.std() > 0.1  # a real comparison: the model's confidence varies


def test_sampling_logprobs_follow_temperature_and_top_k_by_hand():
    model = tiny_model()
    cfg = SamplingConfig(max_new_tokens=10, temperature=0.7, top_k=5, seed=1)
    steps = list(decode_steps(model, None, PROMPTS, cfg))
    for row, prompt in enumerate(PROMPTS):
        new = [s.token_ids[row] for s in steps]
        logits = _full_recompute_logits(model, prompt, new)
        for t, tok in enumerate(new):
            z = (logits[t].double() / 0.7).tolist()
            top = sorted(z, reverse=True)[:5]
            assert z[tok] >= top[-1]  # the pick is among the 5 kept
            want = z[tok] - torch.logsumexp(torch.tensor(top), 0).item()
            assert steps[t].logprobs[row].item() == pytest.approx(want, abs=1e-4)
    greedy = list(decode_steps(model, None, PROMPTS, SamplingConfig(max_new_tokens=3, temperature=0)))
    assert all(s.logprobs.eq(0).all() for s in greedy)  # a point mass, as documented


def test_stream_prints_whole_characters_and_holds_back_stop_prefixes():
    tok = ByteTokenizer()
    text = "ab🙂 héllo wörld END tail"
    stream, pieces = TextStream(tok, stop=["END", "wörld X"]), []
    for byte in tok.encode(text):
        if stream.finished:
            break
        stream.push(byte)
        pieces.append(stream.take())
    stream.end()
    pieces.append(stream.take())
    assert stream.text == "ab🙂 héllo wörld "
    assert "".join(pieces) == stream.text
    assert all("\ufffd" not in p for p in pieces)
    # "wörld " could still have become "wörld X": it must not be printed before the stop decided it.
    printed_before_end = "".join(pieces[: len(tok.encode("ab🙂 héllo wörld "))])
    assert printed_before_end == "ab🙂 héllo "


def test_stream_gives_up_on_invalid_bytes():
    tok = ByteTokenizer()
    stream = TextStream(tok)
    for byte in [0xF0, 0x9F] + list(b"abcdefgh"):
        stream.push(byte)
    stream.end()
    assert stream.text == tok.decode([0xF0, 0x9F] + list(b"abcdefgh"))


def test_empty_prompt_starts_from_eot_and_zero_tokens():
    model, tok = tiny_model(), ByteTokenizer()
    assert len(generate(model, tok, [""], SamplingConfig(max_new_tokens=3, temperature=0))) == 1
    assert generate(model, tok, ["hi"], SamplingConfig(max_new_tokens=0)) == [""]


def test_stream_with_a_trained_bpe_splitting_characters_into_bytes():
    from scratchlm.tokenizer import train_bpe

    tok = train_bpe("héllo wörld 🙂 naïve café 🙂🙂 日本語のテキスト " * 20, 300)
    text = "café 🙂 日本語 x"
    ids = tok.encode(text)
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # some character really is cut between tokens
    stream, pieces = TextStream(tok), []
    for i in ids:
        stream.push(i)
        pieces.append(stream.take())
    stream.end()
    pieces.append(stream.take())
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)


PACKED_VARIANTS = {
    "gqa-qknorm": dict(qk_norm=True),
    "mqa-reference": dict(n_kv_heads=1, attn_impl="reference"),
    "learned-layernorm-gelu-bias": dict(
        n_kv_heads=4, pos_encoding="learned", norm="layernorm", mlp="gelu", bias=True
    ),
    "sinusoidal-relu2": dict(pos_encoding="sinusoidal", mlp="relu2"),
    "ngram": dict(ngram_orders=[2, 3], ngram_buckets=101),
}


@pytest.mark.parametrize("rows", [1, 2])  # one row: `x @ w`; several: oneDNN's prepacked weights
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("name", list(PACKED_VARIANTS))
def test_packed_step_equals_the_model_forward_at_every_step_of_a_padded_batch(name, transposed, rows):
    model = tiny_model(**PACKED_VARIANTS[name])
    decoder = PackedDecoder(model, transposed=transposed)
    ids = torch.tensor([[0, 0, 0, 5, 17, 99], [200, 3, 3, 41, 8, 120]])[
        -rows:
    ]  # the 2-row batch: row 0 padded
    mask = ids != 0
    mask[-1] = True
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    feed = torch.randint(0, 257, (rows, 20), generator=torch.Generator().manual_seed(3))
    packed, forward = model.new_cache(rows), model.new_cache(rows)
    with torch.no_grad():
        for cache in (packed, forward):
            model(ids, cache=cache, positions=positions, attention_mask=mask)
        for t in range(feed.shape[1]):
            got = decoder(feed[:, t : t + 1], packed)  # (B, 1, V)
            want = model(feed[:, t : t + 1], cache=forward)
            if transposed:  # the same products summed in another order
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            else:  # fusing alone changes no bit
                assert torch.equal(got, want)
    assert packed.length == forward.length and torch.equal(packed.next_position, forward.next_position)
    assert torch.equal(packed.mask, forward.mask)
    assert (decoder._rows is not None) == (transposed and rows > 1)  # the oneDNN path is the one tested


@pytest.mark.parametrize("name", list(PACKED_VARIANTS))
def test_packed_decoding_gives_the_ids_of_the_model_forward_and_of_full_recompute(name):
    model = tiny_model(**PACKED_VARIANTS[name])
    cfg = SamplingConfig(max_new_tokens=40, temperature=0)  # 7 + 40 > 32: the window slides too
    packed = generate_ids(model, PROMPTS, cfg)
    assert packed == generate_ids(model, PROMPTS, cfg, packed=False)
    assert packed == generate_ids(model, PROMPTS, cfg, use_cache=False)
    sampled = SamplingConfig(max_new_tokens=20, temperature=1.0, top_p=0.9, seed=5)
    assert generate_ids(model, PROMPTS, sampled) == generate_ids(model, PROMPTS, sampled, packed=False)


def test_models_the_packed_step_would_get_wrong_use_the_forward():
    model = tiny_model(dropout=0.1)
    assert can_pack(model) and not can_pack(model.train())  # dropout acts in training mode
    lora = apply_lora(tiny_model(), LoRAConfig(rank=2))
    assert not can_pack(lora)  # the adapters are outside the packed weights
    cfg = SamplingConfig(max_new_tokens=10, temperature=0)
    assert generate_ids(lora.eval(), PROMPTS, cfg) == generate_ids(lora, PROMPTS, cfg, use_cache=False)

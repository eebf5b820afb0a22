"""Our BPE written as Hugging Face's tokenizer.json encodes exactly as we do, read back by transformers."""

from __future__ import annotations

import pytest
import torch
from support.paths import shakespeare_path

from scratchlm.errors import ScratchError
from scratchlm.interop.hf import export_hf
from scratchlm.interop.hf_tokenizer import byte_to_unicode, merges_from_ranks, write_hf_tokenizer
from scratchlm.model import ModelConfig, Transformer
from scratchlm.tokenizer import GPT2_PATTERN, GPT4_PATTERN, train_bpe, train_char

transformers = pytest.importorskip("transformers", reason="transformers is a test extra (pip install .[hf])")


EXTRA = " héllo wörld 🙂 日本語  \n\n  x<|endoftext|>y  123456 don't DON'T\t\r\n end "


def _corpus() -> str:
    path = shakespeare_path()
    if path is None:  # the mirror is optional: a smaller built-in text still exercises the merges
        return ("First Citizen:\nBefore we proceed any further, hear me speak.\n" + EXTRA) * 200
    return path.read_text()[:150_000]


def test_byte_table_is_a_bijection_onto_printable_characters():
    table = byte_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert all(ch.isprintable() and not ch.isspace() for ch in table.values())
    assert table[ord("A")] == "A" and table[ord(" ")] == "Ġ"  # GPT-2's famous space marker


def test_merges_rebuild_every_token():
    tok = train_bpe(_corpus()[:50_000], 400)
    merges = merges_from_ranks(tok.ranks)
    assert len(merges) == sum(len(t) > 1 for t in tok.ranks)
    rebuilt = [a + b for a, b in merges]
    assert rebuilt == [t for t in tok.ranks if len(t) > 1]
    rank = {t: i for i, t in enumerate(tok.ranks)}
    assert all(rank[a] < rank[a + b] and rank[b] < rank[a + b] for a, b in merges)


@pytest.mark.parametrize("pattern", [GPT4_PATTERN, GPT2_PATTERN], ids=["gpt4", "gpt2"])
def test_autotokenizer_encodes_and_decodes_like_ours(tmp_path, pattern):
    text = _corpus()
    tok = train_bpe(text[:100_000], 600, pattern=pattern)
    write_hf_tokenizer(tok, tmp_path, model_max_length=1 << 20)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    sample = text[-30_000:] + EXTRA
    ours = tok.encode(sample)
    assert hf.encode(sample, add_special_tokens=False) == ours
    assert hf.decode(ours) == sample == tok.decode(ours)
    assert hf.eos_token == "<|endoftext|>" and hf.eos_token_id == tok.eot_id


def test_exported_folder_generates_like_ours(tmp_path):
    from scratchlm.generate import SamplingConfig, generate

    tok = train_bpe(_corpus()[:50_000], 300)
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(vocab_size=tok.vocab_size, n_layers=2, d_model=32, n_heads=4, init_std=0.3)
    )
    export_hf(model.eval(), tmp_path / "hf", tok)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    prompt = "ROMEO: "
    ids = hf_tok(prompt, return_tensors="pt").input_ids
    out = hf.generate(ids, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=tok.eot_id)
    theirs = hf_tok.decode(out[0, ids.shape[1] :])
    ours = generate(model, tok, [prompt], SamplingConfig(max_new_tokens=12, temperature=0, stop_at_eot=False))
    assert ours == [theirs]


def test_char_tokenizers_do_not_convert(tmp_path):
    with pytest.raises(ScratchError, match="BPE"):
        write_hf_tokenizer(train_char("abc"), tmp_path, 16)


def test_digit_runs_split_in_threes_in_hf_too(tmp_path):
    # Oniguruma reads GPT-4's possessive `\p{N}{1,3}+` as `(\p{N}{1,3})+`, whole digit runs at once
    text = "4242 1234567 99999 2024-12-01 x42424y " * 30
    tok = train_bpe(text, 300)
    write_hf_tokenizer(tok, tmp_path, model_max_length=1 << 10)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert hf.encode(text, add_special_tokens=False) == tok.encode(text)

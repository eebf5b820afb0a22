"""`scratchlm generate / export hf / import hf` on a tiny saved model, in-process."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Literal

import pytest
import torch

from scratchlm.cli import build_parser, main
from scratchlm.cli.derive import add_dataclass_arguments, dataclass_from_args
from scratchlm.generate import SamplingConfig
from scratchlm.model import ModelConfig, Transformer
from scratchlm.model.folder import load_model, save_model
from scratchlm.tokenizer import train_char

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tok = train_char(TEXT, special_tokens=["<|endoftext|>"])
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=tok.vocab_size, context_length=48, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2
    )
    cfg = cfg.replace(init_std=0.3)
    path = tmp_path_factory.mktemp("cli") / "model"
    save_model(path, Transformer(cfg), tok)
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_streams_and_is_reproducible(model_dir, capsys):
    args = ("generate", "--ckpt", model_dir, "--prompt", "All:", "--max-new-tokens", 30, "--device", "cpu")
    code, first, _ = run(
        capsys, *args, "--seed", 3, "--top-k", 10, "--top-p", 0.9, "--repetition-penalty", 1.2
    )
    assert code == 0 and first.startswith("All:")
    _, again, _ = run(capsys, *args, "--seed", 3, "--top-k", 10, "--top-p", 0.9, "--repetition-penalty", 1.2)
    assert again == first
    # Streaming and --no-stream print the same text; a stop string cuts it.
    _, greedy, _ = run(capsys, *args, "--temperature", 0)
    _, quiet, _ = run(capsys, *args, "--temperature", 0, "--no-stream")
    assert greedy == quiet
    stop = greedy[8:10]
    _, cut, _ = run(capsys, *args, "--temperature", 0, "--stop", stop)
    body = greedy[len("All:") :]
    assert cut == "All:" + body[: body.find(stop)] + "\n"


def test_generate_batch_and_long_prompt_policy(model_dir, capsys):
    base = ("generate", "--ckpt", model_dir, "--max-new-tokens", 5, "--temperature", 0)
    code, out, _ = run(capsys, *base, "--prompt", "All:", "--prompt", "Speak")
    assert code == 0 and out.count("\n---\n") == 1
    long = "speak " * 20  # 120 characters > context 48
    code, _, err = run(capsys, *base, "--prompt", long, "--truncate", "error")
    assert code == 2 and "context" in err and "Traceback" not in err
    code, _, err = run(capsys, *base, "--prompt", long, "--top-p", 2)
    assert code == 2 and "top_p" in err


def test_export_import_round_trip(model_dir, tmp_path, capsys):
    code, _, _ = run(capsys, "export", "hf", "--ckpt", model_dir, "--out", tmp_path / "hf")
    assert (
        code == 0 and (tmp_path / "hf" / "config.json").is_file() and (tmp_path / "hf" / "tokenizer").is_dir()
    )
    code, _, _ = run(capsys, "import", "hf", "--src", tmp_path / "hf", "--out", tmp_path / "back")
    assert code == 0
    a, tok_a, _ = load_model(model_dir)
    b, tok_b, manifest = load_model(tmp_path / "back")
    assert tok_a.fingerprint() == tok_b.fingerprint() and manifest["extra"]["imported_from"]
    ids = torch.randint(0, a.config.vocab_size, (2, 20))
    with torch.no_grad():
        assert torch.equal(a(ids), b(ids))
    code, _, err = run(capsys, "import", "hf", "--src", tmp_path / "nowhere", "--out", tmp_path / "x")
    assert code == 2 and "config.json" in err


def test_export_refuses_a_gpt2_style_model(tmp_path, capsys):
    tok = train_char(TEXT)
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_layers=1, d_model=16, n_heads=2, pos_encoding="learned")
    save_model(tmp_path / "m", Transformer(cfg), tok)
    code, _, err = run(capsys, "export", "hf", "--ckpt", tmp_path / "m", "--out", tmp_path / "hf")
    assert code == 2 and "pos_encoding" in err


def _generate_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["generate"]


def test_every_sampling_field_has_a_flag_listed_in_help(capsys):
    flags = {a.dest: a.option_strings for a in _generate_parser()._actions}
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    help_text = capsys.readouterr().out
    for f in dataclasses.fields(SamplingConfig):
        assert f.name in flags, f"SamplingConfig.{f.name} has no scratchlm generate flag"
        assert any(flag in help_text for flag in flags[f.name]), f.name
        assert f.metadata.get("help"), f"SamplingConfig.{f.name} has no help text"
    for flag in ("--max-new-tokens", "--temperature", "--top-k", "--top-p", "--repetition-penalty"):
        assert flag in help_text
    for flag in ("--seed", "--stop", "--ignore-eot", "--truncate"):
        assert flag in help_text
    assert "0 = greedy (default 1.0)" in help_text


def test_generate_flags_build_the_sampling_config():
    parser = _generate_parser()
    args = parser.parse_args(["--ckpt", "m"])
    assert dataclass_from_args(SamplingConfig, args) == SamplingConfig()
    argv = ["--ckpt", "m", "--max-new-tokens", "9", "--temperature", "0.5", "--top-k", "3", "--top-p", "0.8"]
    argv += ["--repetition-penalty", "1.2", "--seed", "4", "--stop", "a\\n", "--stop", "b", "--ignore-eot"]
    got = dataclass_from_args(SamplingConfig, parser.parse_args(argv + ["--truncate", "error"]))
    want = SamplingConfig(9, 0.5, 3, 0.8, 1.2, 4, ["a\n", "b"], stop_at_eot=False, truncate="error")
    assert got == want


@dataclasses.dataclass
class _Knobs:
    count: int = 2
    rate: float | None = None
    name: str = "x"
    fast: bool = False
    tags: list[str] = dataclasses.field(default_factory=list, metadata={"help": "a tag"})
    mode: Literal["a", "b"] = "a"


def test_derive_handles_each_kind_of_field():
    parser = argparse.ArgumentParser()
    actions = add_dataclass_arguments(parser, _Knobs, rename={"name": "--label"}, help={"count": "how many"})
    assert set(actions) == {"count", "rate", "name", "fast", "tags", "mode"}
    assert dataclass_from_args(_Knobs, parser.parse_args([])) == _Knobs()
    args = parser.parse_args(["--count", "5", "--rate", "0.5", "--label", "y", "--fast", "--tags", "p"])
    args = parser.parse_args(["--tags", "q", "--mode", "b", "--no-fast"], namespace=args)
    assert dataclass_from_args(_Knobs, args) == _Knobs(5, 0.5, "y", False, ["p", "q"], "b")
    assert dataclass_from_args(_Knobs, parser.parse_args([])).tags == []  # the default list is not shared
    text = parser.format_help()
    assert "how many (default 2)" in text and "a tag" in text and "--no-fast" in text
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "c"])
    skipped = argparse.ArgumentParser()
    add_dataclass_arguments(skipped, _Knobs, skip=("fast", "tags"))
    assert dataclass_from_args(_Knobs, skipped.parse_args(["--count", "1"])) == _Knobs(count=1)

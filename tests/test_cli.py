import subprocess
import sys


def test_cli_help_and_bad_command():
    ok = subprocess.run([sys.executable, "-m", "scratchlm", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "usage: scratchlm" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "scratchlm", "nonsense"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr and "invalid choice" in bad.stderr


def test_a_safetensors_error_is_one_line_exit_2(monkeypatch, capsys):
    import pytest
    from safetensors import SafetensorError

    import scratchlm.cli.tokenizer as tokenizer_cli
    from scratchlm.cli import main

    message = 'Error while serializing: I/O error: No space left on device (os error 28) at path "x/.tmp1"'

    def full(args):
        raise SafetensorError(message)

    monkeypatch.setattr(tokenizer_cli, "cmd_info", full)  # registered when main builds the parser
    assert main(["tokenizer", "info", "--tokenizer", "t"]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"scratchlm: error: cannot write a safetensors file: {message}\n"
    with pytest.raises(SafetensorError):
        main(["--debug", "tokenizer", "info", "--tokenizer", "t"])

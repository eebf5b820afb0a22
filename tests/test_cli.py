import subprocess
import sys


def test_cli_help_and_bad_command():
    ok = subprocess.run([sys.executable, "-m", "scratchlm", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "usage: scratchlm" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "scratchlm", "nonsense"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr and "invalid choice" in bad.stderr

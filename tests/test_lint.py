"""The code base stays ruff-clean (so the one test command also lints)."""

import subprocess
import sys
from pathlib import Path


def test_ruff_clean():
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "ruff", "check", str(root)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr

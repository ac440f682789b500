"""Running the project's CLIs as a user does, for the tests: a subprocess, and its one-line error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """``python ARGV...`` from the repository root, output captured."""
    return subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=180)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a CLI that exited 1 without a traceback (asserted)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]

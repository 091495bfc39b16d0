"""Lit-style checks of what the command line prints: a FileCheck file whose header says how to run it.

    # ARGS: show {model} --all  required; {name} placeholders are filled in by the test module
    # EXIT: 2                   optional; the expected exit code (default 0)
    CHECK: === <root> : forward ===

The text checked is what the command printed: stdout, then stderr.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from qgraph.cli import main


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the command line run in-process."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:  # argparse exits for --help, --version and usage errors
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def directives(check_file: Path) -> dict[str, str]:
    """The ``# KEY: value`` header lines of a lit file."""
    found = {}
    for line in check_file.read_text().splitlines():
        for key in ("MODEL", "ARGS", "EXIT"):
            prefix = f"# {key}:"
            if line.startswith(prefix):
                found[key] = line[len(prefix) :].strip()
    return found


def filecheck(check_file: Path, text: str) -> None:
    """Run the ``filecheck`` package on ``text`` with ``check_file``'s CHECK lines; AssertionError on a mismatch."""
    checked = subprocess.run(
        [sys.executable, "-m", "filecheck", str(check_file)],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

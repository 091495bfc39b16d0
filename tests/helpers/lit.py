"""Lit-style tests: a file says how to run the command line and, in CHECK lines, what it must print.

A RUN line names the command (``%s`` is the file itself), as in LLVM's lit::

    # RUN: qgraph opt --pass fuse-linear %s
    graph(%x : Tensor, ...):
      ...
    # CHECK: aten::linear

The command runs in-process (``qgraph.cli.main``); what it prints (stdout,
then stderr) goes through the ``filecheck`` package with the file as the
check file.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from qgraph.cli import main

__all__ = ["run_cli", "filecheck", "run_lit_file", "directives"]


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the command line run in-process."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:  # argparse exits for --help, --version and usage errors
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def filecheck(check_file: Path, text: str) -> None:
    """Fail with filecheck's own report unless ``text`` satisfies the CHECK lines of ``check_file``."""
    checked = subprocess.run(
        [sys.executable, "-m", "filecheck", str(check_file)], input=text, capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def directives(check_file: Path, keys: tuple[str, ...]) -> dict[str, str]:
    """The ``# KEY: value`` header lines of a lit file."""
    found = {}
    for line in check_file.read_text().splitlines():
        for key in keys:
            prefix = f"# {key}:"
            if line.startswith(prefix):
                found[key] = line[len(prefix) :].strip()
    return found


def run_lit_file(check_file: Path, capsys) -> None:
    """Run the RUN line of ``check_file`` and check what it prints against the file's CHECK lines."""
    run = directives(check_file, ("RUN",)).get("RUN")
    assert run, f"{check_file.name} has no '# RUN:' line"
    program, *args = shlex.split(run.replace("%s", str(check_file)))
    assert program == "qgraph", f"{check_file.name}: RUN lines run the qgraph command line"
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    filecheck(check_file, out + err)

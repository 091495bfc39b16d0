"""Each pass on its own, IR in and IR out: the lit files of tests/lit/passes/ (``qgraph opt``).

A ``.ir`` file holds a graph in IR text for a graph pass; a ``.py`` file a
small model, taken through prepare's and convert's stages up to the pass.
See ``helpers/lit.py`` for the format.
"""

from pathlib import Path

import pytest

from helpers.lit import run_lit_file

LIT_DIR = Path(__file__).parent / "lit" / "passes"


@pytest.mark.parametrize("lit_file", sorted(LIT_DIR.glob("*.*")), ids=lambda path: path.name)
def test_pass(lit_file, capsys):
    run_lit_file(lit_file, capsys)


def test_every_pass_has_a_lit_file():
    from qgraph.convert import convert_pipeline
    from qgraph.prepare import prepare_pipeline
    from qgraph.prepare_qat import prepare_qat_pipeline
    from qgraph.quant.quant_type import QuantType

    covered = set()
    for path in LIT_DIR.glob("*.*"):
        run = next(line for line in path.read_text().splitlines() if line.startswith("# RUN:"))
        covered.add(run.split("--pass", 1)[1].split()[0])
    stages = {s.name for s in prepare_pipeline({}, QuantType.DYNAMIC).stages}
    stages |= {s.name for s in prepare_qat_pipeline({}).stages}
    for lowering in ("reference", "onednn"):
        stages |= {s.name for s in convert_pipeline(False, QuantType.STATIC, [], lowering).stages}
    stages -= {"inline", "constant-propagation", "inline-fork-wait", "cleanup"}  # PyTorch's own passes
    assert stages | {"dedup-module-uses"} <= covered, sorted(stages - covered)

"""``qgraph quantize``, ``compare``, ``sensitivity``, ``draw`` and ``--version``, through tests/lit/tools/.

Each lit file's ``# ARGS:`` names the files below as ``{model}``, ``{data}``, ...;
``# REQUIRES: dot`` marks the ones that draw (skipped without Graphviz).
"""

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.ao.quantization import get_default_qconfig

import qgraph
from helpers.lit import directives, filecheck, run_cli
from helpers.onednn import requires_onednn
from qgraph.ir import walk

LIT_DIR = Path(__file__).parent / "lit" / "tools"


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tools")
    torch.manual_seed(0)
    float_model = Net().eval()
    scripted = torch.jit.script(float_model)
    batches = [torch.randn(2, 3, 8, 8) for _ in range(3)]
    quantized = qgraph.quantize_jit(
        scripted, {"": get_default_qconfig("x86")}, lambda m, data: [m(b) for b in data], [batches]
    )
    paths = {name: directory / f"{name}.pt" for name in ("model", "quantized", "traced")}
    torch.jit.save(scripted, str(paths["model"]))
    torch.jit.save(quantized, str(paths["quantized"]))
    torch.jit.save(torch.jit.trace(float_model, batches[0]), str(paths["traced"]))
    for name, data in {
        "data": batches,
        "tuples": [(b,) for b in batches[:2]],
        "dictionary": {"x": batches[0]},
        "wrong_shape": [torch.randn(2, 5)],
    }.items():
        paths[name] = directory / f"{name}.pt"
        torch.save(data, paths[name])
    paths["text"] = directory / "notes.txt"
    paths["text"].write_text("not data\n")
    return paths


@pytest.mark.parametrize("check_file", sorted(LIT_DIR.glob("*.txt")), ids=lambda path: path.stem)
def test_lit(check_file, capsys, files, tmp_path):
    found = directives(check_file, ("MODEL", "ARGS", "EXIT"))
    if "# REQUIRES: dot" in check_file.read_text() and shutil.which("dot") is None:
        pytest.skip("Graphviz's dot is not installed (apt-get install graphviz)")
    args = found["ARGS"].format(tmp=tmp_path, **files).split()
    code, out, err = run_cli(capsys, *args)
    assert code == int(found.get("EXIT", "0")), out + err
    filecheck(check_file, out + err)


def test_quantize_writes_a_model_that_loads_and_runs(capsys, files, tmp_path):
    output = tmp_path / "quantized.pt"
    code, _, _ = run_cli(
        capsys,
        *("quantize", files["model"], "--calibration", files["data"], "--no-progress", "-o", output),
        *("--qconfig", "helpers.cli_qconfigs:MINMAX"),
    )
    assert code == 0
    loaded = torch.jit.load(str(output))
    batch = torch.load(files["data"])[0]
    assert any(n.kind() == "quantized::conv2d_relu" for n in loaded.graph.nodes())
    assert loaded(batch).shape == (2, 4)


@requires_onednn
def test_quantize_with_the_onednn_lowering_writes_a_model_without_quantized_ops(capsys, files, tmp_path):
    output = tmp_path / "onednn.pt"
    code, out, err = run_cli(
        capsys,
        *("quantize", files["model"], "--calibration", files["data"], "--no-progress", "-o", output),
        *("--qconfig", "onednn", "--lowering", "onednn"),
    )
    assert code == 0, err
    assert "onednn lowering" in out
    loaded = torch.jit.load(str(output))
    kinds = {node.kind() for node in walk(loaded.graph)}
    assert "onednn::qconv2d_pointwise" in kinds
    assert not any(kind.startswith("quantized::") or kind == "aten::quantize_per_tensor" for kind in kinds)
    assert loaded(torch.load(files["data"])[0]).shape == (2, 4)


def test_quantize_keeps_dynamic_quantization_to_the_reference_lowering(capsys, files, tmp_path):
    arguments = ("quantize", files["model"], "--dynamic", "--lowering", "onednn", "-o", tmp_path / "out.pt")
    code, out, err = run_cli(capsys, *arguments)
    assert (code, out) == (2, "")
    assert "--dynamic has the reference lowering" in err


def test_without_dot_drawing_says_how_to_get_it(capsys, files, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    code, out, err = run_cli(capsys, "draw", files["quantized"], "-o", tmp_path / "graph.svg")
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and "install the graphviz system package" in err

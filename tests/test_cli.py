"""The ``qgraph`` command line, in-process, once as a subprocess, and through the lit files in tests/lit/.

A lit file is a FileCheck check file whose header lines say how to run the
command line; the text checked is what the command prints (stdout, then
stderr)::

    # MODEL: convnet            optional; a model saved by this module (default convnet)
    # ARGS: show {model} --all  required; {model} is that model's path, {tmp} a scratch directory,
    #                          {lit} the folder of the lit files
    # EXIT: 2                   optional; the expected exit code (default 0)
    CHECK: === <root> : forward ===
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.testing import FileCheck

from helpers.lit import directives, filecheck, run_cli
from qgraph.prepare import prepare_pipeline
from qgraph.quant.quant_type import QuantType

LIT_DIR = Path(__file__).parent / "lit"


class ConvBnLinear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3)
        self.bn = torch.nn.BatchNorm2d(2)
        self.fc = torch.nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))

    @torch.jit.export
    def features(self, x):
        return self.bn(self.conv(x))


class DecomposedOps(torch.nn.Module):
    """Traced, it shows every standalone pass at the root: a conv+bn pair, a raw conv, an addmm."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3)
        self.bn = torch.nn.BatchNorm2d(2)
        self.kernel = torch.nn.Parameter(torch.randn(2, 2, 1, 1))
        self.weight = torch.nn.Parameter(torch.randn(3, 2))
        self.bias = torch.nn.Parameter(torch.randn(3))

    def forward(self, x):
        y = F.conv2d(self.bn(self.conv(x)), self.kernel).mean((2, 3))
        return torch.addmm(self.bias, y, self.weight.t())


def linear(x, weight, bias):
    return F.linear(x, weight, bias)


class CallsLinearFunction(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(3, 2))
        self.bias = torch.nn.Parameter(torch.randn(3))

    def forward(self, x):
        return linear(x, self.weight, self.bias)


class ConvThenExp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3)

    def forward(self, x):
        return torch.exp(self.conv(x))


def _quantized_convnet() -> torch.jit.ScriptModule:
    from torch.ao.quantization import get_default_qconfig

    import qgraph

    model = torch.jit.script(ConvThenExp().eval())
    batches = [torch.randn(1, 1, 6, 6)]
    return qgraph.quantize_jit(
        model, {"": get_default_qconfig("fbgemm")}, lambda m, data: [m(b) for b in data], [batches]
    )


def _dynamic_convnet() -> torch.jit.ScriptModule:
    from torch.ao.quantization import default_dynamic_qconfig

    import qgraph

    return qgraph.quantize_dynamic_jit(torch.jit.script(ConvBnLinear().eval()), {"": default_dynamic_qconfig})


def _save_models(directory: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    models = {
        "convnet": torch.jit.script(ConvBnLinear().eval()),
        "decomposed-traced": torch.jit.trace(DecomposedOps().eval(), torch.randn(1, 1, 6, 6)),
        "functional-linear": torch.jit.script(CallsLinearFunction()),
        "quantized-convnet": _quantized_convnet(),
        "dynamic-convnet": _dynamic_convnet(),
    }
    paths = {}
    for name, model in models.items():
        paths[name] = directory / f"{name}.pt"
        torch.jit.save(model, str(paths[name]))
    paths["not-torchscript"] = directory / "notes.pt"
    paths["not-torchscript"].write_text("not a model\n")
    return paths


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return _save_models(tmp_path_factory.mktemp("models"))


def test_help_lists_the_commands(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    FileCheck().check("usage: qgraph").check("show").check("passes").run(out)


def test_show_prints_the_root_forward_graph(capsys, models):
    code, out, err = run_cli(capsys, "show", models["convnet"])
    assert (code, err) == (0, "")
    FileCheck().check("graph(%self").check('prim::CallMethod[name="features"]').check("aten::flatten").check(
        'prim::CallMethod[name="forward"]'
    ).check("return").run(out)


def test_show_method_prints_another_root_method(capsys, models):
    code, out, _ = run_cli(capsys, "show", models["convnet"], "--method", "features")
    assert code == 0
    FileCheck().check("graph(%self").check_count('prim::CallMethod[name="forward"]', 2, exactly=True).check_not(
        "aten::flatten"
    ).run(out)


def test_show_all_heads_every_method_with_its_module_path(capsys, models):
    code, out, _ = run_cli(capsys, "show", models["convnet"], "--all")
    assert code == 0
    FileCheck().check("=== <root> : forward ===").check("=== <root> : features ===").check(
        "=== conv : forward ==="
    ).check("aten::conv2d").check("=== bn : forward ===").check("=== fc : forward ===").check("aten::linear").run(out)


def test_method_and_all_exclude_each_other(capsys, models):
    code, _, err = run_cli(capsys, "show", models["convnet"], "--all", "--method", "features")
    assert code == 2
    assert "not allowed with argument" in err


@pytest.mark.parametrize(
    "model, args, message",
    [
        (None, [], "absent.pt: no such file"),
        ("not-torchscript", [], "notes.pt: not a TorchScript archive (PytorchStreamReader"),
        ("convnet", ["--method", "backward"], "the model has no method 'backward' (methods: features, forward)"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_code_2(capsys, models, tmp_path, model, args, message):
    path = models[model] if model else tmp_path / "absent.pt"
    code, out, err = run_cli(capsys, "show", path, *args)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and err.startswith("qgraph: error: ")
    assert message in err


def test_a_directory_is_not_a_model(capsys, tmp_path):
    code, _, err = run_cli(capsys, "show", tmp_path)
    assert code == 2 and err.strip().endswith("is a directory")


def _prepare_stage_names() -> list[str]:
    return [stage.name for stage in prepare_pipeline({}, QuantType.STATIC).stages]


def test_passes_runs_the_stages_prepare_jit_runs(capsys, models):
    code, out, _ = run_cli(capsys, "passes", models["decomposed-traced"])
    assert code == 0
    assert [line[len("=== after ") : -len(" ===")] for line in out.splitlines() if line.startswith("=== after ")] == (
        _prepare_stage_names()
    )


def test_passes_prints_forward_after_each_stage(capsys, models):
    code, out, _ = run_cli(capsys, "passes", models["decomposed-traced"])
    assert code == 0
    FileCheck().check("=== input ===").check('prim::CallMethod[name="forward"](%bn').check(
        "=== after fold-conv-bn ==="
    ).check_not("%bn").check("=== after swap-functional-linear ===").check("aten::addmm").check(
        "=== after fuse-linear ==="
    ).check_not("aten::addmm").check("aten::_convolution").check("aten::linear").check(
        "=== after canonicalize-conv ==="
    ).check_not("aten::_convolution").check("aten::conv2d").check("aten::linear").run(out)


def test_passes_swaps_a_called_linear_function(capsys, models):
    code, out, _ = run_cli(capsys, "passes", models["functional-linear"])
    assert code == 0
    after_swap = out.split("=== after swap-functional-linear ===")[1]
    FileCheck().check("prim::CallFunction").run(out.split("=== after swap-functional-linear ===")[0])
    FileCheck().check_not("prim::CallFunction").check("aten::linear").run(after_swap)


def test_passes_dump_dir_gets_one_file_per_stage(capsys, models, tmp_path):
    code, _, _ = run_cli(capsys, "passes", models["decomposed-traced"], "--dump-dir", tmp_path / "dumps")
    assert code == 0
    names = sorted(p.name for p in (tmp_path / "dumps").iterdir())
    assert names == [f"{i:02d}-prepare-{name}.txt" for i, name in enumerate(_prepare_stage_names())]
    FileCheck().check("=== <root> : forward ===").check("aten::conv2d").check("=== conv : forward ===").run(
        (tmp_path / "dumps" / names[-1]).read_text()
    )


def test_passes_rejects_bad_input_like_show(capsys, tmp_path):
    code, _, err = run_cli(capsys, "passes", tmp_path / "absent.pt")
    assert code == 2 and err.startswith("qgraph: error: ") and "no such file" in err


def test_runs_as_a_python_module(models):
    result = subprocess.run(
        [sys.executable, "-m", "qgraph.cli", "show", str(models["convnet"]), "--method", "missing"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("qgraph: error: the model has no method 'missing'")
    assert "Traceback" not in result.stderr


# --- lit files --------------------------------------------------------------------------------


@pytest.mark.parametrize("check_file", sorted(LIT_DIR.glob("*.txt")), ids=lambda path: path.stem)
def test_lit(check_file, capsys, models, tmp_path):
    found = directives(check_file, ("MODEL", "ARGS", "EXIT"))
    assert "ARGS" in found, f"{check_file.name} has no '# ARGS:' line"
    model = models[found.get("MODEL", "convnet")]
    args = found["ARGS"].format(model=model, tmp=tmp_path, lit=LIT_DIR).split()
    code, out, err = run_cli(capsys, *args)
    assert code == int(found.get("EXIT", "0")), err
    filecheck(check_file, out + err)

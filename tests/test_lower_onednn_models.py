"""The oneDNN lowering on whole models: accuracy against the reference lowering, saving, the report, errors.

Accuracy: on the example models and on torchvision's architectures (small
instances, ``helpers.torchvision_models``), the oneDNN-lowered model's
output SQNR against the float model is within 0.5 dB of the reference
lowering's, or better, both quantized from one calibration (the reference
on PyTorch's onednn engine, as its 8-bit activations need).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from torch.testing import FileCheck

import qgraph
from examples.models import EncoderBlock, MobileNetV2Like, ResNetLike, TransformerMLP, randomize_batchnorm
from helpers.numerics import sqnr
from helpers.onednn import (
    ONEDNN_QCONFIG,
    batches,
    lowered_pair,
    on_onednn_engine,
    prepared_model,
    requires_onednn,
    seeded,  # noqa: F401  (an autouse fixture)
)
from helpers.torchvision_models import architectures, logits, reestimate_batchnorm, torchvision_installed
from passes.lower_onednn import OnednnUnavailableError, support
from passes.lower_onednn.emit import Emitter
from passes.lower_onednn.qparams import QUINT8, QParams
from qgraph.cli import main
from qgraph.report import NO_QCONFIG, UNSUPPORTED_OP, float_op_report

EXAMPLES = {
    "resnet": (lambda: randomize_batchnorm(ResNetLike(width=8)), (3, 32, 32)),
    "mobilenet_v2": (lambda: randomize_batchnorm(MobileNetV2Like(width=4)), (3, 32, 32)),
    "transformer_mlp": (lambda: TransformerMLP(), (5, 32)),
    "encoder_block": (lambda: EncoderBlock(dim=64, heads=4), (17, 64)),
}
TORCHVISION = [
    "resnet",
    "mobilenet_v2",
    "mobilenet_v3",
    "shufflenet_v2",
    "efficientnet_b0",
    "regnet",
    "googlenet",
    "vit",
]


def assert_within_half_a_db(float_model, lowered, reference, held_out: torch.Tensor) -> None:
    with torch.no_grad():
        expected = logits(float_model(held_out))
        onednn = sqnr(expected, logits(lowered(held_out)))
    with on_onednn_engine(), torch.no_grad():
        reference_sqnr = sqnr(expected, logits(reference(held_out)))
    assert onednn >= reference_sqnr - 0.5, f"SQNR {onednn:.2f} dB against the reference lowering's {reference_sqnr:.2f}"


@requires_onednn
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_models_are_as_accurate_as_the_reference(name):
    build, shape = EXAMPLES[name]
    model = build().eval()
    lowered, reference = lowered_pair(model, batches(*shape))
    assert_within_half_a_db(model, lowered, reference, batches(*shape, count=1, batch=16)[0] * 1.1)


@requires_onednn
@pytest.mark.skipif(not torchvision_installed(), reason="torchvision is not installed (make test installs it)")
@pytest.mark.filterwarnings("ignore:Scripted (GoogleNet|Inception3) always returns:UserWarning")
@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_models_are_as_accurate_as_the_reference(name):
    architecture = architectures()[name]
    model = architecture.build().eval()
    shape = (3, architecture.size, architecture.size)
    reestimate_batchnorm(model, batches(*shape, count=2, batch=4))
    lowered, reference = lowered_pair(model, batches(*shape, count=2))
    assert_within_half_a_db(model, lowered, reference, batches(*shape, count=1, batch=8)[0] * 1.1)


@requires_onednn
def test_a_saved_model_loads_and_runs_in_a_process_that_imports_only_torch(tmp_path):
    model = randomize_batchnorm(MobileNetV2Like(width=4)).eval()
    data = batches(3, 32, 32)
    lowered, _ = lowered_pair(model, data)
    x = data[0]
    with torch.no_grad():
        expected = lowered(x)  # packs the weights: the packed tensors must stay out of the archive
    path, io = tmp_path / "model.pt", tmp_path / "io.pt"
    torch.jit.save(lowered, str(path))
    torch.save((x, expected), str(io))
    script = (
        "import sys, torch\n"
        f"model = torch.jit.load({str(path)!r})\n"
        f"x, expected = torch.load({str(io)!r})\n"
        "with torch.no_grad():\n"
        "    first, second = model(x), model(x)\n"
        "assert torch.equal(first, expected) and torch.equal(second, expected)\n"
        "assert 'qgraph' not in sys.modules and 'passes' not in sys.modules\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
    FileCheck().check_not("quantize").check_not("QUInt8").run(str(torch.jit.load(str(path)).graph))


@requires_onednn
def test_the_input_quantization_gives_quantize_per_tensor_bits():
    graph = torch._C.parse_ir("graph(%x : Tensor):\n  return (%x)")
    emitter = Emitter(graph, graph.return_node())
    params = QParams(0.0371, 77, QUINT8)
    graph.return_node().replaceInput(0, emitter.quantize(next(graph.inputs()), params))
    quantize = torch._C._create_function_from_graph("quantize", graph)
    steps = torch.arange(-2000, 2000, dtype=torch.float32)
    x = torch.cat([torch.randn(100_003) * 4, (steps + 0.5) * 0.0371, steps * 0.0371])  # ties and exact steps
    expected = torch.quantize_per_tensor(x, params.scale, params.zero_point, torch.quint8).int_repr()
    assert torch.equal(quantize(x), expected)


class Features(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.head = nn.Sequential(nn.Conv2d(8, 8, 1), nn.Sigmoid())

    def forward(self, x):
        return torch.softmax(self.head(torch.exp(self.conv(x))), dim=1)


@requires_onednn
def test_the_report_lists_each_float_op_with_its_reason():
    lowered, _ = lowered_pair(Features(), batches(3, 8, 8))
    report = float_op_report(lowered)
    reasons = {entry.kind: (entry.reason, entry.detail) for entry in report}
    assert set(reasons) == {"aten::exp", "aten::sigmoid", "aten::softmax"}, report.format()
    assert reasons["aten::sigmoid"][0] == UNSUPPORTED_OP and "sigmoid post-op" in reasons["aten::sigmoid"][1]
    with_none = float_op_report(lowered, {"": ONEDNN_QCONFIG, "head": None})
    assert {entry.reason for entry in with_none if entry.module_path.startswith("head")} <= {NO_QCONFIG}


@requires_onednn
def test_report_on_the_command_line_reads_a_saved_model(tmp_path, capsys):
    lowered, _ = lowered_pair(Features(), batches(3, 8, 8))
    path = tmp_path / "model.pt"
    torch.jit.save(lowered, str(path))
    assert main(["report", str(path)]) == 0
    printed = capsys.readouterr().out
    FileCheck().check("3 ops left in float").check("aten::exp").check("aten::sigmoid").check_same(
        "unsupported op"
    ).check("aten::softmax").run(printed)
    assert main(["report", str(path), "--lowering", "onednn"]) == 0
    capsys.readouterr()


@requires_onednn
def test_report_on_the_command_line_refuses_a_model_of_another_lowering(tmp_path, capsys):
    _, reference = lowered_pair(Features(), batches(3, 8, 8))
    path = tmp_path / "model.pt"
    torch.jit.save(reference, str(path))
    assert main(["report", str(path), "--lowering", "onednn"]) == 2
    assert "converted with lowering 'reference', not 'onednn'" in capsys.readouterr().err


@requires_onednn
def test_convert_keeps_the_prepared_model_and_its_preserved_attributes():
    model = ResNetLike(width=4).eval()
    model.version = 3
    prepared = prepared_model(model, batches(3, 16, 16))
    before = str(prepared.graph)
    lowered = qgraph.convert_jit(prepared, preserved_attrs=["version"], lowering="onednn")
    assert str(prepared.graph) == before and lowered.version == 3


def test_an_unknown_lowering_is_refused_before_calibration():
    calls = []
    model = torch.jit.script(nn.Conv2d(3, 4, 1).eval())
    with pytest.raises(ValueError, match="lowering must be one of 'reference', 'onednn'"):
        qgraph.quantize_jit(model, {"": ONEDNN_QCONFIG}, lambda m, d: calls.append(1), [[]], lowering="fast")
    assert not calls


def test_debug_stops_before_any_lowering():
    prepared = prepared_model(nn.Sequential(nn.Conv2d(3, 4, 1)), batches(3, 6, 6))
    x = batches(3, 6, 6, count=1)[0]
    with torch.no_grad():
        assert torch.equal(
            qgraph.convert_jit(prepared, debug=True, lowering="onednn")(x), qgraph.convert_jit(prepared, debug=True)(x)
        )


def test_dynamic_quantization_has_no_onednn_lowering():
    from qgraph.convert import convert

    prepared = qgraph.prepare_dynamic_jit(torch.jit.script(nn.Linear(4, 4).eval()), {"": ONEDNN_QCONFIG})
    with pytest.raises(ValueError, match="static quantization"):
        convert(prepared, quant_type="dynamic", lowering="onednn")


@pytest.fixture
def fresh_support_check():
    support._problem.cache_clear()
    yield
    support._problem.cache_clear()


def test_a_cpu_whose_int8_products_saturate_is_refused(monkeypatch, fresh_support_check):
    monkeypatch.setattr(support, "_exact_products", lambda: (1048544.0, 1048544.0))
    prepared = prepared_model(nn.Sequential(nn.Conv2d(3, 4, 1)), batches(3, 6, 6))
    with pytest.raises(OnednnUnavailableError, match="no VNNI or AMX int8 instructions"):
        qgraph.convert_jit(prepared, lowering="onednn")


def test_a_build_without_an_op_names_it(monkeypatch, fresh_support_check):
    schemas = torch._C._jit_get_schemas_for_operator
    monkeypatch.setattr(
        torch._C,
        "_jit_get_schemas_for_operator",
        lambda name: [] if name.endswith("qlinear_prepack") else schemas(name),
    )
    with pytest.raises(OnednnUnavailableError, match="no onednn::qlinear_prepack"):
        support.check_onednn()


def test_saturating_instructions_are_detected_on_this_machine():
    # oneDNN limited to AVX-512 without VNNI sums u8 x s8 pairs in 16 bits.
    script = "from passes.lower_onednn import support\nprint(support._problem())\n"
    environment = {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "PYTHONPATH": ":".join(sys.path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=120)
    assert "no VNNI or AMX int8 instructions" in done.stdout or "do not run on this CPU" in done.stdout, done.stderr

"""qgraph.compare: every quantized op against the float model's value; the matching checked against a float twin."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import MinMaxObserver, QConfig, default_dynamic_qconfig, get_default_qconfig

import qgraph
from helpers.float_twin import assert_close_to_twin, float_twin
from helpers.models import reloaded
from helpers.quantized_reference import capture as capture_model
from helpers.torchvision_models import architectures, reestimate_batchnorm, torchvision_installed
from qgraph.ir import walk
from qgraph.numerics_report import COMPARED, NOT_RUN
from qgraph.op_matching import Matcher, compared_sites
from qgraph.taps import Taps

pytestmark = pytest.mark.filterwarnings(
    # The debug models here add a scalar, which qgraph's debug model says it rounds differently from the kernel.
    "ignore:debug=True does not model add/mul with a scalar exactly:UserWarning"
)

X86 = get_default_qconfig("x86")
# MinMax activations keep calibration cheap.
FAST = QConfig(activation=MinMaxObserver.with_args(reduce_range=True), weight=X86.weight)


class Block(nn.Module):
    """Fused conv+relu, a folded BatchNorm, a residual add, cat, a scalar add, mean, slicing, F.linear, sigmoid."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)
        self.weight = nn.Parameter(torch.randn(5, 5))

    def forward(self, x):
        y = self.relu(self.bn(self.conv(x)))
        y = self.bn2(self.conv2(y)) + y
        y = torch.cat([y, y], 1) + 1.0
        z = self.fc(y.mean((2, 3))[:, :4])
        return F.linear(z, self.weight).sigmoid()


def block() -> nn.Module:
    torch.manual_seed(0)
    model = Block().eval()
    for norm in (model.bn, model.bn2):
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
    return model


@pytest.fixture(scope="module")
def batches():
    torch.manual_seed(1)
    return [torch.randn(2, 3, 8, 8) for _ in range(3)]


def quantized_pair(model: torch.jit.ScriptModule, batches, qconfig=FAST):
    prepared = qgraph.prepare_jit(model, {"": qconfig})
    for batch in batches:
        prepared(batch)
    return qgraph.convert_jit(prepared), qgraph.convert_jit(prepared, debug=True)


@pytest.fixture(scope="module", params=["script", "trace"])
def block_models(request, batches):
    float_model = capture_model(block(), (batches[0],), request.param == "trace")
    return (float_model, *quantized_pair(float_model, batches))


EXPECTED_KINDS = {
    "aten::quantize_per_tensor",
    "quantized::conv2d_relu",
    "quantized::conv2d",
    "quantized::add",
    "quantized::cat",
    "quantized::add_scalar",
    "aten::mean",
    "quantized::linear",
    "aten::sigmoid",
}


def test_every_quantized_op_is_compared(block_models, batches):
    float_model, quantized, _ = block_models
    report = qgraph.compare(float_model, quantized, batches)
    assert {op.kind for op in report} == EXPECTED_KINDS
    assert all(op.status == COMPARED for op in report)
    where = {op.kind: (op.module_path, op.source) for op in report}
    assert where["quantized::conv2d_relu"][0] == "conv" and where["quantized::conv2d"][0] == "conv2"
    assert where["aten::sigmoid"][1].startswith("test_compare.py:")
    # The model returns the sigmoid's output, dequantized: the same numbers.
    assert next(op for op in report if op.kind == "aten::sigmoid").sqnr == pytest.approx(report.output_sqnr)


def test_the_debug_model_gives_the_same_numbers(block_models, batches):
    float_model, quantized, debug = block_models
    final = {op.sqnr for op in qgraph.compare(float_model, quantized, batches)}
    reference = qgraph.compare(float_model, debug, batches)
    assert len(reference) == len(final) + 1  # its slicing is requantized where the final model quantizes once
    assert all(op.status == COMPARED for op in reference)
    assert next(op for op in reference if op.kind == "aten::conv2d+relu").module_path == "conv"
    assert sum(1 for op in reference if any(math.isclose(op.sqnr, s, abs_tol=0.05) for s in final)) >= len(final)


def check_against_float_twin(float_model, debug, batch) -> int:
    """Every value compare picks for a debug model's op is the float twin's; returns how many were checked."""
    float_taps, debug_taps = Taps(float_model), Taps(debug)
    matcher = Matcher(float_taps.graph, debug_taps.graph)
    sites = compared_sites(debug_taps.graph)
    position = {node: index for index, node in enumerate(walk(debug_taps.graph))}
    found = [matcher.float_values(site) for site in sites]
    twin, twin_inputs = float_twin(debug)
    checks = [
        (site, [float_taps.tap(value) for value, _ in candidates], twin.tap(twin_inputs[position[site.value.node()]]))
        for site, candidates in zip(sites, found)
    ]
    _, floats = float_taps.run((batch,))
    _, twins = twin.run((batch,))
    checked = 0
    for site, keys, twin_key in checks:
        if twin_key not in twins:
            continue  # a branch this input does not take
        ran = [key for key in keys if key in floats]
        assert len(ran) == 1, f"{site.kind}: {len(ran)} float values"
        assert_close_to_twin(floats[ran[0]], twins[twin_key], site.kind)
        checked += 1
    return checked


def test_the_values_matched_are_the_float_twins(block_models, batches):
    float_model, _, debug = block_models
    assert check_against_float_twin(float_model, debug, batches[0]) == 11  # every op of the debug model


@pytest.mark.skipif(not torchvision_installed(), reason="torchvision is not installed (make test installs it)")
@pytest.mark.parametrize("capture", ["script", "trace"])
def test_torchvision_resnet_matches_op_by_op(capture):
    torch.manual_seed(0)
    architecture = architectures()["resnet"]
    batches = [torch.randn(2, 3, architecture.size, architecture.size)]
    model = reestimate_batchnorm(architecture.build(), batches)
    float_model = capture_model(model, (batches[0],), capture == "trace")
    quantized, debug = quantized_pair(float_model, batches)
    report = qgraph.compare(float_model, quantized, batches)
    assert len(report) == 19 and all(op.status == COMPARED for op in report)
    assert check_against_float_twin(float_model, debug, batches[0]) == 19


def test_models_loaded_from_files_match_without_call_stacks(block_models, batches):
    float_model, quantized, _ = block_models
    in_memory = qgraph.compare(float_model, quantized, batches)
    loaded = qgraph.compare(reloaded(float_model), reloaded(quantized), batches)
    assert [(op.kind, op.module_path, op.source, op.sqnr) for op in loaded] == [
        (op.kind, op.module_path, op.source, op.sqnr) for op in in_memory
    ]


def test_an_eager_float_model_is_captured_as_the_quantized_one_was(block_models, batches):
    float_model, quantized, _ = block_models
    expected = [op.sqnr for op in qgraph.compare(float_model, quantized, batches)]
    assert [op.sqnr for op in qgraph.compare(block(), quantized, batches)] == pytest.approx(expected)


def test_a_float_model_captured_otherwise_is_refused(batches):
    quantized, _ = quantized_pair(torch.jit.script(block()), batches)
    traced = torch.jit.trace(block(), batches[0])
    with pytest.raises(ValueError, match="captured the same way"):
        qgraph.compare(traced, quantized, batches)


class Residual(nn.Module):
    """MobileNet's block: ``if self.use_residual`` reads a module attribute, which freezing folds."""

    def __init__(self, use_residual: bool):
        super().__init__()
        self.use_residual = use_residual
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


def test_ops_of_a_branch_freezing_folded_pair_at_run_time(batches):
    torch.manual_seed(3)
    model = torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 1), Residual(True), Residual(False)).eval())
    quantized, debug = quantized_pair(model, batches)
    report = qgraph.compare(model, quantized, batches)
    assert all(op.status == COMPARED for op in report)
    assert [op.module_path for op in report if op.kind.startswith("quantized::conv2d")] == ["0", "1.conv", "2.conv"]
    reference = qgraph.compare(model, debug, batches)
    assert {op.status for op in reference} == {COMPARED, NOT_RUN}  # each block's other branch
    assert "not reached by the inputs (-)" in reference.format()


def test_dynamic_quantization_compares_its_kernels():
    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(4, 6, batch_first=True)
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            return self.fc(self.lstm(x)[0])

    torch.manual_seed(4)
    model = torch.jit.script(Recurrent().eval())
    quantized = qgraph.quantize_dynamic_jit(model, {"": default_dynamic_qconfig})
    report = qgraph.compare(model, quantized, torch.randn(2, 5, 4))
    assert {(op.kind, op.module_path) for op in report} == {
        ("aten::quantized_lstm", "lstm"),
        ("quantized::linear_dynamic", "fc"),
    }
    assert all(op.status == COMPARED and op.sqnr > 20 for op in report)


def test_the_table_sorts_worst_first_within_100_columns(batches):
    class Deep(nn.Module):
        def __init__(self):
            super().__init__()
            self.a_rather_long_stage_name = nn.Sequential(
                nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()), nn.Sequential(nn.Conv2d(4, 4, 1))
            )

        def forward(self, x):
            return self.a_rather_long_stage_name(x)

    model = torch.jit.script(Deep().eval())
    quantized, _ = quantized_pair(model, batches)
    report = qgraph.compare(model, quantized, batches[0])  # one call's arguments
    text = report.format()
    assert max(len(line) for line in text.splitlines()) <= 100
    values = [op.sqnr for op in report.worst_first()]
    assert values == sorted(values)
    assert len(report.format(limit=1).splitlines()) == 5  # title, header, rule, one row, "(n more)"

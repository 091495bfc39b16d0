"""finalize: quant-dequant models lowered to quantized ops, bit for bit like the reference.

Each model is prepared and calibrated with torch.ao.quantization; the
reference's quant-dequant model goes through our ``passes.finalize`` and the
reference's own convert gives the oracle from the same observers. Outputs
must be equal and both graphs must run the same quantized ops.
"""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.ao.quantization import (
    PlaceholderObserver,
    QConfig,
    default_dynamic_qconfig,
    default_qconfig,
    float16_dynamic_qconfig,
    get_default_qconfig,
    per_channel_dynamic_qconfig,
)
from torch.ao.quantization.quant_type import QuantType
from torch.testing import FileCheck

from helpers.quantized_reference import (
    assert_equal_outputs,
    aten_op_counts,
    capture,
    quantization_op_counts,
    reference_pair,
)
from passes import finalize
from qgraph.ir import as_cpp

PER_CHANNEL = get_default_qconfig("fbgemm")


def finalize_and_compare(model, example, tracing, qconfig=default_qconfig, quant_type=QuantType.STATIC, runs=2):
    """Our finalize vs the reference convert on one calibrated model; returns our quantized model."""
    scripted = capture(model, example, tracing)
    calibration = [example] + [tuple(torch.randn_like(t) if t.is_floating_point() else t for t in example)]
    qdq, reference = reference_pair(scripted, {"": qconfig}, calibration, quant_type)
    ours = finalize(qdq, quant_type)
    assert isinstance(ours, torch.jit.ScriptModule)
    for _ in range(runs):
        inputs = tuple(torch.randn_like(t) if t.is_floating_point() else t for t in example)
        assert_equal_outputs(ours, reference, inputs)
    assert quantization_op_counts(ours.graph) == quantization_op_counts(reference.graph)
    assert aten_op_counts(ours.graph) == aten_op_counts(reference.graph)
    FileCheck().check_not("_prepack").check_not("_unpack").run(str(ours.graph))
    return ours


def _image(dim: int, channels: int = 3, size: int = 6) -> torch.Tensor:
    return torch.randn(1, channels, *([size] * dim))


_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


class ConvRelu(nn.Module):
    __constants__ = ["relu_kind"]

    def __init__(self, dim, relu):
        super().__init__()
        self.conv = _CONV[dim](3, 4, 3)
        self.relu_kind = relu
        self.relu = nn.ReLU(inplace=relu == "module_inplace")

    def forward(self, x):
        y = self.conv(x)
        if self.relu_kind in ("module", "module_inplace"):
            return self.relu(y)
        if self.relu_kind == "functional":
            return F.relu(y)
        if self.relu_kind == "functional_inplace":
            return F.relu(y, inplace=True)
        return y


class ConvEveryRelu(nn.Module):
    """One conv per relu form (none, module, in-place module, F.relu, in-place F.relu)."""

    def __init__(self, dim):
        super().__init__()
        self.branches = nn.ModuleList(
            ConvRelu(dim, relu) for relu in ("none", "module", "module_inplace", "functional", "functional_inplace")
        )

    def forward(self, x):
        return [branch(x) for branch in self.branches]


@pytest.mark.parametrize("tracing", [False, True], ids=["script", "trace"])
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_conv_and_conv_relu(dim, tracing):
    torch.manual_seed(0)
    ours = finalize_and_compare(ConvEveryRelu(dim), (_image(dim, size=5 if dim == 3 else 6),), tracing)
    FileCheck().check_count("aten::quantize_per_tensor", 1, exactly=True).check_count(
        f"quantized::conv{dim}d(", 1, exactly=True
    ).check_count(f"quantized::conv{dim}d_relu(", 4, exactly=True).check_not(f"aten::conv{dim}d").check_not(
        "aten::relu"
    ).run(str(ours.graph))


class ConvTranspose(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.deconv = (nn.ConvTranspose1d if dim == 1 else nn.ConvTranspose2d)(3, 2, 3, stride=2)

    def forward(self, x):
        return self.deconv(x)


@pytest.mark.parametrize("tracing", [False, True], ids=["script", "trace"])
@pytest.mark.parametrize("dim", [1, 2])
def test_conv_transpose_under_qnnpack(qnnpack_engine, dim, tracing):
    torch.manual_seed(0)
    ours = finalize_and_compare(ConvTranspose(dim), (_image(dim, size=4),), tracing, get_default_qconfig("qnnpack"))
    FileCheck().check(f"quantized::conv_transpose{dim}d(").check_not(f"aten::conv_transpose{dim}d").run(str(ours.graph))


class LinearRelu(nn.Module):
    __constants__ = ["relu_kind"]

    def __init__(self, relu):
        super().__init__()
        self.fc = nn.Linear(6, 4)
        self.relu_kind = relu
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.fc(x)
        if self.relu_kind == "module":
            return self.relu(y)
        if self.relu_kind == "functional_inplace":
            return F.relu(y, inplace=True)
        return y


class FunctionalLinear(nn.Module):
    """F.linear with a weight and bias stored as plain tensor attributes."""

    __constants__ = ["relu"]

    def __init__(self, relu: bool, bias: bool = True):
        super().__init__()
        self.w = torch.randn(4, 6)
        self.b = torch.randn(4) if bias else None
        self.relu = relu

    def forward(self, x):
        y = F.linear(x, self.w, self.b)
        return F.relu(y) if self.relu else y


class EveryLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.plain = LinearRelu("none")
        self.relu_module = LinearRelu("module")
        self.relu_inplace = LinearRelu("functional_inplace")
        self.functional = FunctionalLinear(relu=False)
        self.functional_relu = FunctionalLinear(relu=True)

    def forward(self, x):
        return (self.plain(x), self.relu_module(x), self.relu_inplace(x), self.functional(x), self.functional_relu(x))


@pytest.mark.parametrize("tracing", [False, True], ids=["script", "trace"])
@pytest.mark.parametrize("qconfig", [default_qconfig, PER_CHANNEL], ids=["per_tensor", "per_channel"])
def test_linear_and_linear_relu(qconfig, tracing):
    torch.manual_seed(0)
    ours = finalize_and_compare(EveryLinear(), (torch.randn(2, 6),), tracing, qconfig)
    FileCheck().check_count("aten::quantize_per_tensor", 1, exactly=True).run(str(ours.graph))
    FileCheck().check_count("quantized::linear(", 2, exactly=True).run(str(ours.graph))
    FileCheck().check_count("quantized::linear_relu(", 3, exactly=True).check_not("aten::linear").check_not(
        "aten::relu"
    ).run(str(ours.graph))


class Binary(nn.Module):
    """Two conv outputs combined by one binary op."""

    __constants__ = ["case"]

    def __init__(self, case):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 2, 2)
        self.conv2 = nn.Conv2d(2, 2, 2)
        self.case = case

    def forward(self, x, y):
        a = self.conv1(x)
        b = self.conv2(y)
        if self.case == "add":
            return a + b
        if self.case == "add_inplace":
            a += b
            return a
        if self.case == "add_relu":
            return F.relu(a + b)
        if self.case == "add_inplace_relu_inplace":
            a += b
            return F.relu(a, inplace=True)
        if self.case == "add_repeated_alpha":
            z = a + b
            w = b + z
            return z + w
        if self.case == "mul":
            return a * b
        if self.case == "mul_inplace":
            a *= b
            return a
        if self.case == "mul_relu":
            return torch.relu(a * b)
        return torch.cat([a, b], 1)


_BINARY_CASES = [
    ("add", "quantized::add("),
    ("add_inplace", "quantized::add("),
    ("add_relu", "quantized::add_relu("),
    ("add_inplace_relu_inplace", "quantized::add_relu("),
    ("add_repeated_alpha", "quantized::add("),
    ("mul", "quantized::mul("),
    ("mul_inplace", "quantized::mul("),
    ("mul_relu", "quantized::mul_relu("),
    ("cat", "quantized::cat("),
]


class EveryBinary(nn.Module):
    def __init__(self):
        super().__init__()
        self.branches = nn.ModuleList(Binary(case) for case, _ in _BINARY_CASES)

    def forward(self, x, y):
        return [branch(x, y) for branch in self.branches]


@pytest.mark.parametrize("tracing", [False, True], ids=["script", "trace"])
def test_binary_ops(tracing):
    torch.manual_seed(0)
    ours = finalize_and_compare(EveryBinary(), (torch.randn(1, 2, 5, 5), torch.randn(1, 2, 5, 5)), tracing)
    graph = str(ours.graph)
    # three adds of the alpha chain, plus the plain and in-place ones
    FileCheck().check_count("quantized::add(", 5, exactly=True).run(graph)
    FileCheck().check_count("quantized::add_relu(", 2, exactly=True).run(graph)
    FileCheck().check_count("quantized::mul(", 2, exactly=True).run(graph)
    FileCheck().check_count("quantized::mul_relu(", 1, exactly=True).run(graph)
    FileCheck().check_count("quantized::cat(", 1, exactly=True).run(graph)
    for gone in ("aten::add", "aten::mul", "aten::relu", "aten::cat"):
        FileCheck().check_not(gone).run(graph)


class ScalarOp(nn.Module):
    __constants__ = ["case"]

    def __init__(self, case):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 2)
        self.case = case

    def forward(self, x):
        x = self.conv(x)
        if self.case == "add_scalar":
            return x + 3
        if self.case == "add_scalar_relu":
            return F.relu(x + 3)
        if self.case == "add_scalar_out":
            x += 3
            return x
        if self.case == "mul_scalar":
            return x * 3
        if self.case == "mul_scalar_relu":
            return torch.relu(x * 3)
        if self.case == "mul_scalar_out":
            x *= 3
            return x
        return x * x


_SCALAR_CASES = [
    ("add_scalar", "quantized::add_scalar("),
    ("add_scalar_relu", "quantized::add_scalar_relu("),
    ("add_scalar_out", "quantized::add_scalar_out("),
    ("mul_scalar", "quantized::mul_scalar("),
    ("mul_scalar_relu", "quantized::mul_scalar_relu("),
    ("mul_scalar_out", "quantized::mul_scalar_out("),
    ("square", "quantized::mul("),
]


class EveryScalarOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.branches = nn.ModuleList(ScalarOp(case) for case, _ in _SCALAR_CASES)

    def forward(self, x):
        return [branch(x) for branch in self.branches]


@pytest.mark.parametrize("tracing", [False, True], ids=["script", "trace"])
def test_scalar_ops_and_square(tracing):
    torch.manual_seed(0)
    ours = finalize_and_compare(EveryScalarOp(), (torch.randn(1, 2, 5, 5),), tracing)
    graph = str(ours.graph)
    for _, op in _SCALAR_CASES:
        FileCheck().check_count(op, 1, exactly=True).run(graph)
    FileCheck().check_not("aten::add").check_not("aten::mul").check_not("aten::relu").run(graph)


class AddAlphaTwo(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 2, 2)
        self.conv2 = nn.Conv2d(2, 2, 2)

    def forward(self, x, y):
        return torch.add(self.conv1(x), self.conv2(y), alpha=2)


def test_add_with_alpha_other_than_one_stays_float():
    torch.manual_seed(0)
    ours = finalize_and_compare(AddAlphaTwo(), (torch.randn(1, 2, 5, 5), torch.randn(1, 2, 5, 5)), False)
    FileCheck().check("aten::add").check_not("quantized::add").run(str(ours.graph))


class FloatAdd(nn.Module):
    def forward(self, x, y):
        return x + y


@pytest.mark.parametrize("tracing", [False, True], ids=["script", "trace"])
def test_float_op_without_quantized_input_stays_float(tracing):
    torch.manual_seed(0)
    ours = finalize_and_compare(FloatAdd(), (torch.randn(2, 3), torch.randn(2, 3)), tracing)
    FileCheck().check("aten::add").check_not("quantized::").check_not("aten::quantize_per_tensor").run(str(ours.graph))


_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


class BatchNormRelu(nn.Module):
    __constants__ = ["relu_kind"]

    def __init__(self, dim, relu):
        super().__init__()
        self.bn = _BN[dim](3)
        self.bn.running_mean.uniform_(-0.5, 0.5)
        self.bn.running_var.uniform_(0.5, 1.5)
        self.relu_kind = relu
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.bn(x)
        if self.relu_kind == "module_inplace":
            return self.relu(y)
        if self.relu_kind == "functional":
            return F.relu(y)
        return y


# The reference does not fuse BatchNorm1d with relu; 2-d and 3-d get every relu form.
_BN_RELUS = {1: ("none",), 2: ("none", "module_inplace", "functional"), 3: ("none", "functional")}


class EveryBatchNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.branches = nn.ModuleList(BatchNormRelu(dim, relu) for relu in _BN_RELUS[dim])

    def forward(self, x):
        return [branch(x) for branch in self.branches]


@pytest.mark.parametrize("tracing", [False, True], ids=["script", "trace"])
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_batch_norm(dim, tracing):
    torch.manual_seed(0)
    ours = finalize_and_compare(EveryBatchNorm(dim), (_image(dim, size=4),), tracing)
    fused = len(_BN_RELUS[dim]) - 1
    graph = str(ours.graph)
    FileCheck().check_count("quantized::batch_norm(", 1, exactly=True).run(graph)
    FileCheck().check_count("quantized::batch_norm_relu(", fused, exactly=True).run(graph)
    FileCheck().check_not("aten::batch_norm").check_not("aten::relu").run(graph)


class Activation(nn.Module):
    __constants__ = ["case"]

    def __init__(self, case):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.case = case
        # Only the norm this case uses: unused norm submodules in sibling
        # instances make the reference's prepare read freed memory.
        norms = {
            "layer_norm": lambda: nn.LayerNorm([4, 3, 3]),
            "group_norm": lambda: nn.GroupNorm(2, 4),
            "instance_norm": lambda: nn.InstanceNorm2d(4, affine=True),
        }
        self.norm = norms[case]() if case in norms else nn.Identity()

    def forward(self, x):
        x = self.conv(x)
        if self.case == "hardswish":
            return F.hardswish(x)
        if self.case == "hardswish_":
            return F.hardswish(x, inplace=True)
        if self.case == "elu":
            return F.elu(x)
        if self.case == "elu_":
            return F.elu(x, inplace=True)
        if self.case in ("layer_norm", "group_norm", "instance_norm"):
            return self.norm(x)
        if self.case == "sigmoid":
            return torch.sigmoid(x)
        if self.case == "hardsigmoid":
            return F.hardsigmoid(x)
        return torch.tanh(x)


_ACTIVATION_CASES = [
    ("hardswish", "quantized::hardswish("),
    ("hardswish_", "quantized::hardswish("),
    ("elu", "quantized::elu("),
    ("elu_", "quantized::elu("),
    ("layer_norm", "quantized::layer_norm("),
    ("group_norm", "quantized::group_norm("),
    ("instance_norm", "quantized::instance_norm("),
    ("sigmoid", "aten::sigmoid("),
    ("hardsigmoid", "aten::hardsigmoid("),
    ("tanh", "aten::tanh("),
]


class EveryActivation(nn.Module):
    def __init__(self):
        super().__init__()
        self.branches = nn.ModuleList(Activation(case) for case, _ in _ACTIVATION_CASES)

    def forward(self, x):
        return [branch(x) for branch in self.branches]


@pytest.mark.parametrize("tracing", [False, True], ids=["script", "trace"])
def test_ops_with_their_own_or_fixed_output_qparams(tracing):
    torch.manual_seed(0)
    ours = finalize_and_compare(EveryActivation(), (torch.randn(1, 4, 3, 3),), tracing)
    graph = str(ours.graph)
    # One quantize for the input: everything after it runs on quantized tensors.
    FileCheck().check_count("aten::quantize_per_tensor", 1, exactly=True).run(graph)
    for op in sorted({op for _, op in _ACTIVATION_CASES}):
        FileCheck().check(op).run(graph)
    for gone in ("aten::hardswish", "aten::elu", "aten::layer_norm", "aten::group_norm", "aten::instance_norm"):
        FileCheck().check_not(gone).run(graph)


class InstanceNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dim](4)

    def forward(self, x):
        return self.norm(x)


@pytest.mark.parametrize("dim", [1, 3])
def test_instance_norm_other_dims(dim):
    torch.manual_seed(0)
    ours = finalize_and_compare(InstanceNorm(dim), (torch.randn(1, 4, *([3] * dim)),), False)
    FileCheck().check("quantized::instance_norm(").check_not("aten::instance_norm").run(str(ours.graph))


class GeneralOpsChain(nn.Module):
    """Value ops that keep the input's qparams and shape ops, between one conv and the output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.hardtanh = nn.Hardtanh()
        self.pool = nn.AvgPool2d(2)

    def forward(self, x):
        x = self.conv(x)
        x = torch.clamp(x, -2, 2)
        x = self.hardtanh(x)
        x = F.leaky_relu(x, 0.1)
        x = F.max_pool2d(x, 2, 1)
        x = self.pool(x)
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        x = F.adaptive_avg_pool2d(x, (2, 2))
        x = torch.mean(x, [2, 3], True)
        x = x.permute(0, 2, 3, 1).contiguous()
        return torch.flatten(x, 1)


@pytest.mark.parametrize("tracing", [False, True], ids=["script", "trace"])
def test_general_value_and_shape_ops_stay_quantized(tracing):
    torch.manual_seed(0)
    ours = finalize_and_compare(GeneralOpsChain(), (torch.randn(1, 3, 8, 8),), tracing)
    FileCheck().check_count("aten::quantize_per_tensor", 1, exactly=True).check("quantized::conv2d(").check(
        "aten::clamp("
    ).check("aten::hardtanh(").check("aten::leaky_relu(").check("aten::avg_pool2d(").check(
        "aten::adaptive_avg_pool2d("
    ).check("aten::mean(").check_count("aten::dequantize", 1, exactly=True).run(str(ours.graph))


def test_dequantize_tuple_and_finalize_keeps_module_kind():
    torch.manual_seed(0)

    class TwoOutputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 3, 3)
            self.conv2 = nn.Conv2d(3, 3, 3)

        def forward(self, x):
            return self.conv1(x), self.conv2(x)

    scripted = capture(TwoOutputs(), (_image(2),), False)
    qdq, reference = reference_pair(scripted, {"": default_qconfig}, [(_image(2),)])
    frozen_c = finalize(qdq._c, QuantType.STATIC)
    assert isinstance(frozen_c, torch._C.ScriptModule)
    ours = torch.jit._recursive.wrap_cpp_module(frozen_c)
    assert_equal_outputs(ours, reference, (_image(2),))
    FileCheck().check_count("quantized::conv2d(", 2, exactly=True).run(str(ours.graph))


def test_packed_weights_are_attributes_computed_once():
    torch.manual_seed(0)
    ours = finalize_and_compare(ConvRelu(2, "module"), (_image(2),), False)
    graph = str(ours.graph)
    FileCheck().check('prim::GetAttr[name="_packed_params_0"]').check("quantized::conv2d_relu(").run(graph)
    packed = ours._c.getattr("_packed_params_0")
    assert type(packed).__name__ == "ScriptObject"
    weight, bias = torch.ops.quantized.conv2d_unpack(packed)
    assert weight.is_quantized and bias is not None


@pytest.mark.parametrize("tracing", [False, True], ids=["script", "trace"])
def test_save_and_load_gives_identical_outputs(tracing):
    torch.manual_seed(0)
    ours = finalize_and_compare(GeneralOpsChain(), (torch.randn(1, 3, 8, 8),), tracing, PER_CHANNEL)
    buffer = io.BytesIO()
    torch.jit.save(ours, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(loaded(x), ours(x))


def test_preserved_attrs_survive_freezing():
    torch.manual_seed(0)

    class WithCounter(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.version = 3

        def forward(self, x):
            return self.fc(x)

    scripted = capture(WithCounter(), (torch.randn(2, 4),), False)
    qdq, _ = reference_pair(scripted, {"": default_qconfig}, [(torch.randn(2, 4),)])
    ours = finalize(qdq, QuantType.STATIC, preserved_attrs=["version"])
    assert ours.version == 3


def test_bad_arguments_raise_clear_errors():
    torch.manual_seed(0)
    scripted = capture(LinearRelu("none"), (torch.randn(2, 6),), False)
    qdq, _ = reference_pair(scripted, {"": default_qconfig}, [(torch.randn(2, 6),)])
    with pytest.raises(TypeError, match="TorchScript module"):
        finalize(LinearRelu("none"), QuantType.STATIC)
    with pytest.raises(TypeError, match="QuantType"):
        finalize(qdq, "static")
    with pytest.raises(ValueError, match="STATIC and QuantType.DYNAMIC"):
        finalize(qdq, QuantType.QAT)
    with pytest.raises(TypeError, match="preserved_attrs"):
        finalize(qdq, QuantType.STATIC, preserved_attrs="version")


# --- dynamic -----------------------------------------------------------------------------


class DynamicLinears(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(5, 6)
        self.fc2 = nn.Linear(6, 3, bias=False)
        self.w = torch.randn(3, 3)

    def forward(self, x):
        return F.linear(self.fc2(torch.relu(self.fc1(x))), self.w)


@pytest.mark.parametrize("tracing", [False, True], ids=["script", "trace"])
@pytest.mark.parametrize(
    "qconfig", [default_dynamic_qconfig, per_channel_dynamic_qconfig], ids=["per_tensor", "per_channel"]
)
def test_dynamic_linear(qconfig, tracing):
    torch.manual_seed(0)
    ours = finalize_and_compare(DynamicLinears(), (torch.randn(4, 5),), tracing, qconfig, QuantType.DYNAMIC)
    FileCheck().check_count("quantized::linear_dynamic(", 3, exactly=True).check_not("aten::linear").check_not(
        "aten::_choose_qparams_per_tensor"
    ).check_not("aten::quantize_per_tensor").check_not("aten::dequantize").run(str(ours.graph))


@pytest.mark.parametrize("tracing", [False, True], ids=["script", "trace"])
def test_dynamic_linear_fp16(tracing):
    torch.manual_seed(0)
    model = DynamicLinears()
    model.fc1.weight.data[0, 0] = 1e6  # outside fp16 range: saturates like eager
    ours = finalize_and_compare(model, (torch.randn(4, 5),), tracing, float16_dynamic_qconfig, QuantType.DYNAMIC)
    # Tracing turns the plain tensor attribute into a graph constant, which the
    # reference does not observe, so that F.linear stays float there.
    FileCheck().check_count("quantized::linear_dynamic_fp16(", 2 if tracing else 3, exactly=True).check_not(
        "aten::quantize"
    ).check_not("aten::dequantize").run(str(ours.graph))
    if not tracing:
        FileCheck().check_not("aten::linear").run(str(ours.graph))
    buffer = io.BytesIO()
    torch.jit.save(ours, buffer)
    buffer.seek(0)
    x = torch.randn(4, 5)
    assert torch.equal(torch.jit.load(buffer)(x), ours(x))


def _embedding_qconfig(op_name):
    return QConfig(
        activation=PlaceholderObserver.with_args(dtype=torch.float, custom_op_name=op_name),
        weight=PlaceholderObserver.with_args(custom_op_name=op_name),
    )


class Bag(nn.Module):
    def __init__(self):
        super().__init__()
        self.bag = nn.EmbeddingBag(10, 8, mode="sum", include_last_offset=True)

    def forward(self, indices, offsets):
        return self.bag(indices, offsets)


@pytest.mark.parametrize("tracing", [False, True], ids=["script", "trace"])
@pytest.mark.parametrize("op_name", ["embedding_bag_byte", "embedding_bag_4bit"])
def test_embedding_bag_rowwise_offsets_with_prepacked_weight(op_name, tracing):
    torch.manual_seed(0)
    indices, offsets = torch.tensor([0, 1, 2, 3, 9, 4]), torch.tensor([0, 2, 6])
    scripted = capture(Bag(), (indices, offsets), tracing)
    qdq, reference = reference_pair(scripted, {"bag": _embedding_qconfig(op_name)}, [(indices, offsets)])
    ours = finalize(qdq, QuantType.STATIC)
    assert_equal_outputs(ours, reference, (indices, offsets))
    FileCheck().check(f"quantized::{op_name}_rowwise_offsets(").check_not("_prepack").check_not(
        "aten::embedding_bag"
    ).run(str(ours.graph))


# --- the whole qgraph path ---------------------------------------------------------------


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


@pytest.mark.parametrize("tracing", [False, True], ids=["script", "trace"])
def test_whole_qgraph_path_matches_reference(tracing):
    from torch.ao.quantization import quantize_jit

    import qgraph

    torch.manual_seed(0)
    example = (torch.randn(1, 3, 6, 6),)
    data = [(torch.randn(1, 3, 6, 6),) for _ in range(2)]

    def calibrate(model, batches):
        for batch in batches:
            model(*batch)

    scripted = capture(SmallNet(), example, tracing)
    ours = qgraph.quantize_jit(scripted, {"": PER_CHANNEL}, calibrate, [data])
    reference = quantize_jit(scripted, {"": PER_CHANNEL}, calibrate, [data])
    x = torch.randn(1, 3, 6, 6)
    assert_equal_outputs(ours, reference, (x,))
    assert quantization_op_counts(ours.graph) == quantization_op_counts(reference.graph)
    assert as_cpp(ours) is not as_cpp(scripted)

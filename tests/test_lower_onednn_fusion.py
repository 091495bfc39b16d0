"""The oneDNN lowering fuses each epilogue into its conv or linear: which post-op, and how close to the reference.

Each test quantizes a small model with both lowerings from one calibration
(``helpers.onednn.lowered_pair``), checks the emitted code with FileCheck
(the oneDNN op, the post-op it carries, no quantized dtype), and compares
the outputs with the reference lowering's.

Tolerances are in the coarsest quantization step the reference rounds to
(``coarsest_step``): both lowerings accumulate the same integers, and they
differ only in where they round. The fused op rounds its output once (a
last op here computes floats and does not round at all); the reference
also rounds the conv's output before the activation or residual add, which
moves the result by at most half a step times the activation's largest
slope (1 for clamps and adds, 1.1 for SiLU and GELU, 1.5 for hardswish),
plus its own output's half step: at most 1.25 steps, so 1.5 is allowed.
Where both round the same value once, one step is allowed.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.testing import FileCheck

from helpers.onednn import (
    assert_close_to_reference,
    batches,
    coarsest_step,
    graph_text,
    lowered_pair,
    requires_onednn,
    run_reference,
    seeded,  # noqa: F401  (an autouse fixture)
)

pytestmark = requires_onednn

CONV = "ops.onednn.qconv2d_pointwise("
LINEAR = "ops.onednn.qlinear_pointwise("
NO_SCALARS = "annotate(List[Optional[number]], [])"
# Post-op arguments that are not empty are built once, before the op that reads them. The relu6 bound
# is 6 as the reference requantizes it: the largest value the conv's observed range holds, if below.
SCALARS = {
    '"hardtanh", _': " = annotate(List[Optional[number]], [0., ",
    '"leaky_relu", _': " = annotate(List[Optional[number]], [0.2",
}


def assert_no_quantized_dtype(model) -> None:
    for quantized in ("aten::quantize_per_tensor", "aten::dequantize", "quantized::", "QUInt8", "QInt8"):
        FileCheck().check_not(quantized).run(graph_text(model))


def input_zero_points(model) -> list[int]:
    """The input zero point each oneDNN conv of ``model`` is called with."""
    convs = [n for n in model.graph.nodes() if n.kind() == "onednn::qconv2d_pointwise"]
    return [conv.inputsAt(2).toIValue() for conv in convs]


class ConvActivation(nn.Module):
    def __init__(self, activation: nn.Module):
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.activation = activation

    def forward(self, x):
        return self.activation(self.conv(x))


@pytest.mark.parametrize(
    ("activation", "post_op", "steps"),
    [
        (nn.ReLU(), '"relu"', 1.0),
        (nn.ReLU6(), '"hardtanh", _', 1.0),
        (nn.Hardswish(), '"hardswish"', 1.5),
        (nn.SiLU(), '"swish"', 1.5),
        (nn.Identity(), '"none"', 1.0),
    ],
    ids=["relu", "relu6", "hardswish", "silu", "none"],
)
def test_conv_activation_is_a_post_op(activation, post_op, steps):
    data = batches(8, 10, 10)
    lowered, reference = lowered_pair(ConvActivation(activation), data)
    # The last op computes the float output (output_dtype 6) with the activation as its post-op.
    FileCheck().check(SCALARS.get(post_op, "")).check(CONV).check_same(f"1., 0, 6, {post_op}").run(lowered.code)
    for separate in ("torch.relu", "torch.hardtanh", "torch.hardswish", "torch.silu", "torch.clamp("):
        FileCheck().check_not(separate).run(lowered.code)
    assert_no_quantized_dtype(lowered)
    assert_close_to_reference(lowered, reference, data[0], steps)


class ConvClampConv(nn.Module):
    def __init__(self, clamp: nn.Module):
        super().__init__()
        self.first = nn.Conv2d(8, 16, 3, padding=1)
        self.clamp = clamp
        self.second = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        return self.second(self.clamp(self.first(x)))


@pytest.mark.parametrize(
    ("clamp", "post_op"),
    [(nn.ReLU(), '"none"'), (nn.ReLU6(), '"none"'), (nn.Hardtanh(0.5, 2.0), '"hardtanh"')],
    ids=["relu", "relu6", "hardtanh_away_from_0"],
)
def test_a_clamp_between_convs_is_the_range_of_the_integers(clamp, post_op):
    # The clamped output is quantized over what the clamp lets through, so
    # uint8 saturation does the clamp: zero point 0 after a relu. A clamp
    # that keeps 0 out needs its post-op (an affine range always holds 0).
    lowered, _ = lowered_pair(ConvClampConv(clamp), batches(8, 10, 10))
    zero_point = ", 0," if post_op == '"none"' else ""
    FileCheck().check(CONV).check_same(f"{zero_point} None, {post_op}").check(CONV).run(lowered.code)


class ConvResidual(nn.Module):
    def __init__(self, activation: nn.Module):
        super().__init__()
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.activation = activation

    def forward(self, x):
        return self.activation(self.body(x) + x)


@pytest.mark.parametrize(
    ("activation", "unary"), [(nn.Identity(), '"none"'), (nn.ReLU(), '"relu"')], ids=["sum", "sum_relu"]
)
def test_residual_add_is_a_sum_post_op(activation, unary):
    data = batches(8, 10, 10)
    lowered, reference = lowered_pair(ConvResidual(activation), data)
    FileCheck().check(CONV).check_same(f'"sum", 1., {unary}').run(lowered.code)
    assert_no_quantized_dtype(lowered)
    assert_close_to_reference(lowered, reference, data[0], 1.5)


class Broadcasting(nn.Module):
    """A residual add whose other operand broadcasts: the fused sum cannot take it."""

    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.gate = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        return self.body(x) + self.gate(torch.mean(x, [2, 3], keepdim=True))


def test_a_broadcasting_add_runs_unfused_and_right():
    data = batches(8, 10, 10)
    lowered, reference = lowered_pair(Broadcasting(), data)
    FileCheck().check('"sum"').run(lowered.code)  # fused where the shapes agree, checked at run time
    assert_close_to_reference(lowered, reference, data[0], 1.5)


class ResidualReadAfterward(nn.Module):
    """The residual's other operand is read again after the add: the in-place sum must not overwrite it."""

    def __init__(self):
        super().__init__()
        self.first = nn.Conv2d(8, 8, 1)
        self.second = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        a = self.first(x)
        return self.second(a) + a, a


def test_an_accumulator_read_later_is_copied_first():
    data = batches(8, 10, 10)
    lowered, reference = lowered_pair(ResidualReadAfterward(), data)
    FileCheck().check("torch.clone(").check('"sum"').run(lowered.code)
    with torch.no_grad():
        total, a = lowered(data[0])
    expected_total, expected_a = run_reference(reference, data[0])
    step = coarsest_step(reference)
    assert (a - expected_a).abs().max() <= step + 1e-6
    assert (total - expected_total).abs().max() <= 1.5 * step + 1e-6


class PaddedConv(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1, groups=groups)

    def forward(self, x):
        return self.conv(x)


class UnpaddedConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        return self.conv(x)


def test_an_unpadded_dense_conv_runs_with_zero_point_0_and_a_bias_that_absorbs_it():
    data = batches(8, 10, 10)
    lowered, reference = lowered_pair(UnpaddedConv(), data)
    # The input is signed, so its zero point is not 0; the conv is called with 0.
    assert input_zero_points(lowered) == [0]
    assert_close_to_reference(lowered, reference, data[0], 1.0)


def test_a_padded_dense_conv_keeps_its_input_zero_point():
    data = batches(8, 10, 10)
    lowered, reference = lowered_pair(PaddedConv(1), data)
    FileCheck().check_not("constant_pad_nd").check(CONV).check_same("[1, 1], [1, 1], [1, 1], 1,").run(lowered.code)
    assert input_zero_points(lowered)[0] > 0
    assert_close_to_reference(lowered, reference, data[0], 1.0)


def test_a_depthwise_conv_keeps_its_input_zero_point():
    data = batches(8, 10, 10)
    lowered, reference = lowered_pair(PaddedConv(8), data)
    FileCheck().check(CONV).check_same("[1, 1], [1, 1], [1, 1], 8,").run(lowered.code)
    assert input_zero_points(lowered)[0] > 0
    assert_close_to_reference(lowered, reference, data[0], 1.0)


class LinearActivation(nn.Module):
    def __init__(self, activation: nn.Module):
        super().__init__()
        self.linear = nn.Linear(16, 32)
        self.activation = activation

    def forward(self, x):
        return self.activation(self.linear(x))


@pytest.mark.parametrize(
    ("activation", "post_op"),
    [
        (nn.GELU(), f'"gelu", {NO_SCALARS}, "none"'),
        (nn.GELU(approximate="tanh"), f'"gelu", {NO_SCALARS}, "tanh"'),
        (nn.Hardswish(), '"hardswish"'),
        (nn.LeakyReLU(0.2), '"leaky_relu", _'),
    ],
    ids=["gelu", "gelu_tanh", "hardswish", "leaky_relu"],
)
def test_linear_activation_is_a_post_op(activation, post_op):
    data = batches(5, 16)
    lowered, reference = lowered_pair(LinearActivation(activation), data)
    FileCheck().check(SCALARS.get(post_op, "")).check(LINEAR).check_same(post_op).run(lowered.code)
    FileCheck().check_not("torch.gelu").check_not("torch.leaky_relu").check_not("torch.hardswish").run(lowered.code)
    assert_no_quantized_dtype(lowered)
    assert_close_to_reference(lowered, reference, data[0], 1.5)


class LinearResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(16, 16)

    def forward(self, x):
        return x + self.body(x)


def test_linear_residual_add_is_a_sum_post_op():
    data = batches(7, 16)
    lowered, reference = lowered_pair(LinearResidual(), data)
    FileCheck().check(LINEAR).check_same('"sum", 1., "none"').run(lowered.code)
    assert_no_quantized_dtype(lowered)
    assert_close_to_reference(lowered, reference, data[0], 1.5)

"""The oneDNN lowering's integer code between convs: pooling, shuffles, cat, averages, gates, relu, control flow.

Each test checks the emitted code with FileCheck and the output against
the reference lowering of the same calibrated model. Ops that only pick or
move values (max pooling, channel shuffle, equal-parameter cat) give the
reference's integers exactly, so the outputs differ only by the convs
around them: one step of the coarsest quantization the reference rounds to.
Averages round once where the reference rounds once too (one step);
requantizing steps and the squeeze-excitation product, whose gate the
reference quantizes and the fused op does not, are allowed two.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.testing import FileCheck

from helpers.onednn import (
    assert_close_to_reference,
    batches,
    coarsest_step,
    lowered_pair,
    requires_onednn,
    run_reference,
    seeded,  # noqa: F401  (an autouse fixture)
)

pytestmark = requires_onednn

CONV = "ops.onednn.qconv2d_pointwise("


class ConvMaxPool(nn.Module):
    def __init__(self, ceil_mode: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(3, 2, 1, ceil_mode=ceil_mode)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.pool(self.conv(x)))


def test_max_pooling_is_a_separable_max_of_strided_views():
    # 20 x 20 = 400 positions: aten's max pooling on a channels-last uint8 tensor raises there.
    data = batches(3, 20, 20)
    lowered, reference = lowered_pair(ConvMaxPool(), data)
    FileCheck().check(CONV).check("torch.constant_pad_nd(").check_count("torch.maximum(", 4).check(CONV).run(
        lowered.code
    )
    FileCheck().check_not("max_pool2d").run(lowered.code)
    assert_close_to_reference(lowered, reference, data[0], 1.0)


def test_ceil_mode_max_pooling_pools_the_dequantized_values():
    data = batches(3, 19, 19)
    lowered, reference = lowered_pair(ConvMaxPool(ceil_mode=True), data)
    FileCheck().check("torch.max_pool2d(").run(lowered.code)
    assert_close_to_reference(lowered, reference, data[0], 1.0)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's stride-1 unit: split the channels, transform one half, concatenate, shuffle."""

    def __init__(self):
        super().__init__()
        self.branch = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8))

    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1)
        out = torch.cat((x1, self.branch(x2)), dim=1)
        n, c, h, w = out.size()
        return out.reshape(n, 2, c // 2, h, w).transpose(1, 2).contiguous().reshape(n, c, h, w)


class ShuffleStage(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 1)
        self.units = nn.Sequential(ShuffleUnit(), ShuffleUnit())
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.head(self.units(self.stem(x)))


def test_shufflenet_units_run_on_integers():
    data = batches(3, 8, 8)
    lowered, reference = lowered_pair(ShuffleStage(), data)
    unit = FileCheck().check("torch.chunk(").check(CONV).check("torch.cat(").check("torch.native_channel_shuffle(")
    unit.check("torch.chunk(").check("torch.native_channel_shuffle(").run(lowered.code)
    FileCheck().check_not("torch.transpose(").run(lowered.code)
    assert_close_to_reference(lowered, reference, data[0], 2.0)


class PooledHead(nn.Module):
    def __init__(self, pooling: str):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pooling = pooling
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.conv(x)
        if self.pooling == "adaptive":
            x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        elif self.pooling == "mean":
            x = x.mean([2, 3])
        else:
            x = F.avg_pool2d(x, 2).mean([2, 3])
        return self.fc(x)


@pytest.mark.parametrize("pooling", ["adaptive", "mean", "avg_pool"])
def test_averages_are_taken_over_the_integers(pooling):
    data = batches(3, 10, 10)
    lowered, reference = lowered_pair(PooledHead(pooling), data)
    FileCheck().check(CONV).check("torch.mean(").check("ops.onednn.qlinear_pointwise(").run(lowered.code)
    FileCheck().check_not("adaptive_avg_pool2d").run(lowered.code)
    assert_close_to_reference(lowered, reference, data[0], 1.0)


class SqueezeExcitation(nn.Module):
    def __init__(self, gate: nn.Module):
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.act = nn.SiLU()
        self.reduce = nn.Conv2d(16, 4, 1)
        self.expand = nn.Conv2d(4, 16, 1)
        self.gate = gate
        self.head = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        x = self.act(self.conv(x))
        scale = self.gate(self.expand(F.relu(self.reduce(F.adaptive_avg_pool2d(x, 1)))))
        return self.head(x * scale)


@pytest.mark.parametrize("gate", [nn.Sigmoid(), nn.Hardsigmoid()], ids=["sigmoid", "hardsigmoid"])
@pytest.mark.parametrize("batch", [1, 2])
def test_a_per_channel_gate_scales_a_depthwise_conv(gate, batch):
    # A batch of one takes the fused conv; a gate per sample of a larger batch multiplies dequantized values.
    data = batches(8, 9, 9, batch=batch)
    lowered, reference = lowered_pair(SqueezeExcitation(gate), data)
    # A depthwise 1x1 conv over the 16 channels (its weight, all 127, packed on the first call), with the gate
    # / 127 as its weight scales; a gate of another shape takes the other branch.
    fused = FileCheck().check("if torch.eq(torch.size(").check("ops.onednn.qconv_prepack(").check_same("16,")
    fused.check("torch.mul(torch.reshape(").check_same("[-1]), 0.00787").check(CONV).check_same("None, [1, 1], [0, 0]")
    fused.check_same("[1, 1], 16,").check("else:").check("torch.mul(").run(lowered.code)
    assert_close_to_reference(lowered, reference, data[0], 2.0)


class ReluOfSum(nn.Module):
    """A relu the add's pattern does not take (it sits in a branch on a flag): it runs on a quantized tensor."""

    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)
        self.relu = True

    def forward(self, x):
        out = self.body(x) + x
        if self.relu:
            out = torch.relu(out)
        return self.head(out)


def test_a_relu_of_a_quantized_sum_joins_the_sum():
    data = batches(8, 10, 10)
    lowered, reference = lowered_pair(ReluOfSum(), data)
    FileCheck().check(CONV).check_same('"sum", 1., "relu"').check(CONV).run(lowered.code)
    FileCheck().check_not("torch.clamp(").run(lowered.code)
    assert_close_to_reference(lowered, reference, data[0], 2.0)


class Branches(nn.Module):
    """Both branches of a run-time if end in a conv, quantized differently: the result is requantized."""

    def __init__(self):
        super().__init__()
        self.left = nn.Conv2d(3, 8, 3, padding=1)
        self.right = nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        if bool(x.sum() > 0):
            y = self.left(x)
        else:
            y = self.right(x) * 3.0
        return self.head(y)


def test_if_branches_quantized_differently_agree_on_one_range():
    data = [batch + shift for batch in batches(3, 8, 8) for shift in (1.0, -1.0)]
    lowered, reference = lowered_pair(Branches(), data)
    FileCheck().check("if ").check(CONV).check("else:").run(lowered.code)
    for x in (data[0][:1] + 1.0, data[0][:1] - 1.0):
        with torch.no_grad():
            actual = lowered(x)
        expected = run_reference(reference, x)
        assert (actual - expected).abs().max() <= 3 * coarsest_step(reference) + 1e-6

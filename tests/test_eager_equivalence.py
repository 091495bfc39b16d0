"""Graph mode (qgraph) against eager mode (torch.ao.quantization.prepare/convert) on the same float weights.

Each test builds one float module, then from deep copies of it an eager
model (QuantStub/DeQuantStub around what is quantized, fused where graph
mode fuses) and the TorchScript capture qgraph quantizes; both get the same
qconfigs and calibration batches. Where the two compute the same quantized
ops with the same qparams, the outputs are equal bit for bit.

Eager mode only fuses what ``fuse_modules`` is told to, while graph mode
folds Conv-BN and observes a conv's relu output, so the eager models below
fuse conv+bn and conv+relu first; otherwise the two would legitimately
compute different things (the eager conv would be requantized at the conv
output's range before the relu).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from torch.ao.quantization import (
    DeQuantStub,
    QuantStub,
    convert,
    default_per_channel_qconfig,
    default_qconfig,
    fuse_modules,
    prepare,
)

import qgraph
from examples.models import calibrate, randomize_batchnorm
from helpers.numerics import assert_bitwise_equal

CAPTURES = ("script", "trace")


def _batches(shape: tuple[int, ...], count: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(*shape, generator=generator) for _ in range(count)]


def _eager_quantized(model: nn.Module, batches) -> nn.Module:
    """prepare -> calibrate -> convert; qconfigs are already set on ``model`` and its children."""
    prepared = prepare(model.eval())
    calibrate(prepared, batches)
    return convert(prepared)


def _graph_quantized(model: nn.Module, qconfig_dict: dict, batches, capture: str) -> torch.jit.ScriptModule:
    model = model.eval()
    captured = torch.jit.trace(model, batches[0]) if capture == "trace" else torch.jit.script(model)
    return qgraph.quantize_jit(captured, qconfig_dict, calibrate, [batches])


class Stubbed(nn.Module):
    """``body`` quantized as a whole: quantize the input, dequantize the output."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.quant = QuantStub()
        self.body = body
        self.dequant = DeQuantStub()

    def forward(self, x):
        return self.dequant(self.body(self.quant(x)))


def _compare(float_model: nn.Module, eager_body: nn.Module, qconfig_dict: dict, shape, capture: str) -> None:
    batches = _batches(shape)
    eager = Stubbed(eager_body)
    eager.qconfig = qconfig_dict[""]
    eager_quantized = _eager_quantized(eager, batches)
    graph_quantized = _graph_quantized(copy.deepcopy(float_model), qconfig_dict, batches, capture)
    assert "quantized::" in str(graph_quantized.graph)
    x = _batches(shape, count=1)[0] * 0.9
    with torch.no_grad():
        output = graph_quantized(x)
        # Equal and quantized: a pipeline that left everything in float would also agree with itself.
        assert not torch.equal(output, float_model(x))
        assert_bitwise_equal(output, eager_quantized(x), "graph-mode and eager-mode outputs")


@pytest.mark.parametrize("capture", CAPTURES)
def test_single_linear(capture):
    torch.manual_seed(0)
    model = nn.Linear(16, 8).eval()
    _compare(model, copy.deepcopy(model), {"": default_qconfig}, (4, 16), capture)


@pytest.mark.parametrize("capture", CAPTURES)
def test_single_conv(capture):
    torch.manual_seed(0)
    model = nn.Conv2d(3, 8, 3, padding=1).eval()
    _compare(model, copy.deepcopy(model), {"": default_qconfig}, (2, 3, 8, 8), capture)


@pytest.mark.parametrize("capture", CAPTURES)
@pytest.mark.parametrize("qconfig", [default_qconfig, default_per_channel_qconfig], ids=["per_tensor", "per_channel"])
def test_conv_bn_folded_like_eager_fusion(capture, qconfig):
    torch.manual_seed(0)
    model = randomize_batchnorm(nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8))).eval()
    eager_body = fuse_modules(copy.deepcopy(model), [["0", "1"]])
    _compare(model, eager_body, {"": qconfig}, (2, 3, 8, 8), capture)


class ConvReLUBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv(x))


class Head(nn.Module):
    def __init__(self, ch: int, classes: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(x), 1))


class Nested(nn.Module):
    """Two blocks of one class (one TorchScript class type until qconfigs tell them apart) and a head."""

    def __init__(self):
        super().__init__()
        self.stem = ConvReLUBlock(3, 8)
        self.block1 = ConvReLUBlock(8, 8)
        self.block2 = ConvReLUBlock(8, 8)
        self.head = Head(8, 4)

    def forward(self, x):
        return self.head(self.block2(self.block1(self.stem(x))))


@pytest.mark.parametrize("capture", CAPTURES)
def test_nested_submodules_with_their_own_qconfigs(capture):
    torch.manual_seed(0)
    model = Nested().eval()
    qconfig_dict = {"": default_qconfig, "block2": default_per_channel_qconfig, "head.fc": default_per_channel_qconfig}

    eager_body = copy.deepcopy(model)
    for name in ("stem", "block1", "block2"):
        fuse_modules(getattr(eager_body, name), [["conv", "relu"]], inplace=True)
    eager_body.block2.qconfig = default_per_channel_qconfig
    eager_body.head.fc.qconfig = default_per_channel_qconfig

    _compare(model, eager_body, qconfig_dict, (2, 3, 8, 8), capture)


class WithFloatPart(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = ConvReLUBlock(3, 8)
        self.float_part = nn.Sequential(nn.Conv2d(8, 8, 1), nn.Sigmoid())
        self.last = nn.Conv2d(8, 4, 3)

    def forward(self, x):
        return self.last(self.float_part(self.first(x)))


class EagerWithFloatPart(nn.Module):
    """``WithFloatPart``'s computation with the float part between a DeQuantStub and a QuantStub."""

    def __init__(self, model: WithFloatPart):
        super().__init__()
        self.quant = QuantStub()
        self.first = fuse_modules(model.first, [["conv", "relu"]])
        self.dequant_before_float = DeQuantStub()
        self.float_part = model.float_part
        self.quant_after_float = QuantStub()
        self.last = model.last
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.dequant_before_float(self.first(self.quant(x)))
        x = self.quant_after_float(self.float_part(x))
        return self.dequant(self.last(x))


@pytest.mark.parametrize("capture", CAPTURES)
def test_submodule_skipped_with_qconfig_none(capture):
    torch.manual_seed(0)
    model = WithFloatPart().eval()
    batches = _batches((2, 3, 8, 8))

    eager = EagerWithFloatPart(copy.deepcopy(model))
    eager.qconfig = default_qconfig
    eager.float_part.qconfig = None
    eager_quantized = _eager_quantized(eager, batches)
    graph_quantized = _graph_quantized(
        copy.deepcopy(model), {"": default_qconfig, "float_part": None}, batches, capture
    )

    graph_text = str(graph_quantized.graph)
    # The skipped part runs in float between a dequantize and a quantize.
    assert "quantized::conv2d_relu" in graph_text
    assert "aten::conv2d" in graph_text and "aten::sigmoid" in graph_text
    x = _batches((2, 3, 8, 8), count=1)[0] * 0.9
    with torch.no_grad():
        assert_bitwise_equal(graph_quantized(x), eager_quantized(x), "graph-mode and eager-mode outputs")

"""qgraph.convert.convert: input checks, cloning, and debug / final models against the reference's convert_jit."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.ao.quantization import (
    QConfig,
    convert_dynamic_jit,
    convert_jit,
    default_dynamic_qconfig,
    default_observer,
    default_per_channel_weight_observer,
    default_qconfig,
    float16_dynamic_qconfig,
)
from torch.ao.quantization.quant_type import QuantType
from torch.testing import FileCheck

from helpers.quant_dequant_reference import assert_same_outputs, calibrated, observer_children, script_or_trace
from qgraph.convert import convert

TRACING = pytest.mark.parametrize("tracing", [False, True], ids=["scripted", "traced"])


class ConvPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3)
        self.avgpool = nn.AvgPool2d(3)

    def forward(self, x):
        return self.avgpool(self.conv(x))


def prepared_conv_pool(tracing=False, qconfig=default_qconfig):
    torch.manual_seed(0)
    data = [(torch.rand(1, 3, 10, 10),)]
    return calibrated(script_or_trace(ConvPool(), data[0], tracing), {"": qconfig}, data), data


def test_eager_module_is_rejected():
    with pytest.raises(ValueError, match="script module"):
        convert(ConvPool())


def test_module_without_forward_is_rejected():
    class NoForward(nn.Module):
        @torch.jit.export
        def run(self, x):
            return x

    with pytest.raises(ValueError, match="forward"):
        convert(torch.jit.script(NoForward()))


@TRACING
def test_debug_model_computes_float_ops_between_quant_dequant_and_matches_reference(tracing):
    prepared, data = prepared_conv_pool(tracing)
    ours = convert(prepared, debug=True)
    reference = convert_jit(prepared, debug=True)
    FileCheck().check_not("quantized::conv2d").check("aten::conv2d").check("aten::avg_pool2d").check(
        "aten::q_scale"
    ).check_next("aten::q_zero_point").check_next("prim::dtype").check_next("aten::quantize_per_tensor").check(
        "aten::dequantize"
    ).run(str(ours.graph))
    assert observer_children(ours) == []
    for args in data + [(torch.rand(2, 3, 10, 10),)]:
        assert_same_outputs(ours(*args), reference(*args))


def test_inplace_false_leaves_the_model_and_inplace_true_returns_it():
    prepared, data = prepared_conv_pool()
    before = str(prepared.graph) + str(prepared.conv.graph)
    converted = convert(prepared, debug=True)
    assert converted is not prepared
    assert str(prepared.graph) + str(prepared.conv.graph) == before
    same = convert(prepared, inplace=True, debug=True)
    assert same is prepared
    assert observer_children(prepared) == []
    assert_same_outputs(prepared(*data[0]), converted(*data[0]))


def test_debug_model_keeps_dequantize_through_freezing():
    # Freezing folds the per-channel weight quantization into a constant but
    # keeps the activation quantize / dequantize pairs.
    torch.manual_seed(3)
    weight = default_per_channel_weight_observer.with_args(ch_axis=1)
    data = [(torch.randn(1, 3, 10, 10),)]
    qconfig = QConfig(activation=default_observer, weight=weight)
    prepared = calibrated(torch.jit.script(nn.Sequential(nn.Conv2d(3, 5, 3)).eval()), {"": qconfig}, data)
    frozen = torch.jit.freeze(convert(prepared, debug=True))
    frozen(*data[0])
    graph = str(frozen.graph)
    FileCheck().check_count("aten::quantize_per_tensor", 2, exactly=True).run(graph)
    FileCheck().check_count("aten::quantize_per_channel", 0, exactly=True).run(graph)
    FileCheck().check("aten::quantize_per_tensor").check_next("aten::dequantize").check("aten::dequantize").check_next(
        "aten::conv2d"
    ).run(graph)


class Linears(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 5)
        self.fc2 = nn.Linear(5, 5)

    def forward(self, x):
        return self.fc2(F.relu(self.fc(x)))


@pytest.mark.parametrize("qconfig", [default_dynamic_qconfig, float16_dynamic_qconfig], ids=["int8", "fp16"])
def test_dynamic_debug_model_matches_reference(qconfig):
    torch.manual_seed(1)
    x = torch.rand(3, 5)
    prepared = calibrated(torch.jit.script(Linears().eval()), {"": qconfig}, dynamic=True)
    ours = convert(prepared, debug=True, quant_type=QuantType.DYNAMIC)
    reference = convert_dynamic_jit(prepared, debug=True)
    assert_same_outputs(ours(x), reference(x))


@TRACING
def test_final_model_matches_reference(tracing):
    prepared, data = prepared_conv_pool(tracing)
    ours = convert(prepared)
    reference = convert_jit(prepared)
    FileCheck().check("quantized::conv2d").check_not("aten::conv2d").run(str(ours.graph))
    for args in data:
        assert_same_outputs(ours(*args), reference(*args))
    assert_same_outputs(ours(*data[0]), convert(prepared, debug=True)(*data[0]))


def test_final_dynamic_model_matches_reference():
    torch.manual_seed(2)
    x = torch.rand(3, 5)
    prepared = calibrated(torch.jit.script(Linears().eval()), {"": default_dynamic_qconfig}, dynamic=True)
    ours = convert(prepared, quant_type="dynamic")
    FileCheck().check("quantized::linear_dynamic").check_not("aten::_choose_qparams_per_tensor").run(str(ours.graph))
    assert_same_outputs(ours(x), convert_dynamic_jit(prepared)(x))

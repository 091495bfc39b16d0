"""End to end: ``qgraph.quantize_jit`` against ``torch.ao.quantization.quantize_jit``.

The same float model, qconfig and calibration data go through both; the
quantized outputs must be identical bit for bit. The models are the shapes
people quantize (examples/models.py): a ResNet-18-style net (conv-bn-relu,
downsampling and identity residual blocks, max/avg pooling, linear), a
MobileNetV2-style net (depthwise convs, ReLU6, residual adds) and a
transformer-style MLP stack (linear, relu, layer_norm, residual adds), each
scripted and traced, with a per-tensor and a per-channel qconfig.

Note on qconfigs: ``get_default_qconfig("fbgemm")`` / ``("x86")`` observe
weights per channel (HistogramObserver activations); ``default_qconfig`` is
the per-tensor one. The grid uses the MinMax-based ``default_qconfig`` and
``default_per_channel_qconfig`` to keep calibration cheap; the SQNR and
qnnpack tests use the engines' default (histogram) qconfigs.

Quantizing is the expensive part, so each (model, capture, qconfig) is
quantized once per module run by both pipelines and shared by the tests
that read it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
from torch.ao.quantization import (
    HistogramObserver,
    QConfig,
    default_per_channel_qconfig,
    default_qconfig,
    default_weight_observer,
    get_default_qconfig,
)
from torch.ao.quantization import quantize_jit as reference_quantize_jit
from torch.testing import FileCheck

import qgraph
from examples.models import (
    MobileNetV2Like,
    ResNetLike,
    TransformerMLP,
    calibrate,
    calibration_batches,
    randomize_batchnorm,
)
from helpers.numerics import assert_bitwise_equal, sqnr

QCONFIGS = {"per_tensor": default_qconfig, "per_channel": default_per_channel_qconfig}
CAPTURES = ("script", "trace")


def _resnet() -> nn.Module:
    return randomize_batchnorm(ResNetLike(width=8))


def _mobilenet() -> nn.Module:
    return randomize_batchnorm(MobileNetV2Like(width=8))


def _transformer_mlp() -> nn.Module:
    return TransformerMLP(dim=32, hidden=64, depth=2)


MODELS = {
    "resnet18_style": (_resnet, (1, 3, 32, 32)),
    "mobilenet_v2_style": (_mobilenet, (1, 3, 32, 32)),
    "transformer_mlp": (_transformer_mlp, (2, 8, 32)),
}


def _capture(model: nn.Module, example: torch.Tensor, capture: str) -> torch.jit.ScriptModule:
    return torch.jit.trace(model, example) if capture == "trace" else torch.jit.script(model)


@dataclass
class Quantized:
    float_model: nn.Module
    captured: torch.jit.ScriptModule
    example: torch.Tensor
    ours: torch.jit.ScriptModule
    reference: torch.jit.ScriptModule


def _quantize_both(model_name: str, capture: str, qconfig_name: str, debug: bool = False) -> Quantized:
    build, shape = MODELS[model_name]
    torch.manual_seed(0)
    float_model = build().eval()
    example = torch.randn(*shape)
    captured = _capture(float_model, example, capture)
    batches = calibration_batches(shape, count=2)
    qconfig_dict = {"": QCONFIGS[qconfig_name]}
    ours = qgraph.quantize_jit(captured, qconfig_dict, calibrate, [batches], debug=debug)
    reference = reference_quantize_jit(captured, qconfig_dict, calibrate, [batches], debug=debug)
    return Quantized(float_model, captured, example, ours, reference)


@pytest.fixture(scope="module")
def quantized():
    """``quantized(model, capture, qconfig, debug=False)``: both pipelines' results, computed once per module."""
    cache: dict[tuple, Quantized] = {}

    def get(model_name: str, capture: str, qconfig_name: str, debug: bool = False) -> Quantized:
        key = (model_name, capture, qconfig_name, debug)
        if key not in cache:
            cache[key] = _quantize_both(*key)
        return cache[key]

    return get


# ---- bit-exactness with the reference -------------------------------------------------------


@pytest.mark.parametrize("qconfig_name", QCONFIGS)
@pytest.mark.parametrize("capture", CAPTURES)
@pytest.mark.parametrize("model_name", MODELS)
def test_output_equals_reference_bit_for_bit(quantized, model_name, capture, qconfig_name):
    # Traced ResNet: the second call of a BasicBlock's shared ``self.relu`` is
    # traced as method ``forward1``; the reference delays the residual add's
    # observation to that relu's output (quantized::add_relu), so qgraph must too.
    result = quantized(model_name, capture, qconfig_name)
    with torch.no_grad():
        assert_bitwise_equal(result.ours(result.example), result.reference(result.example))


@pytest.mark.parametrize("capture", CAPTURES)
def test_traced_and_scripted_resnet_fuse_residual_add_with_relu_like_reference(quantized, capture):
    result = quantized("resnet18_style", capture, "per_tensor")
    expected_add_relus = str(result.reference.graph).count("quantized::add_relu")
    assert expected_add_relus == 8  # one per BasicBlock, relu called through the block's shared module
    FileCheck().check_count("quantized::add_relu", expected_add_relus, exactly=True).check_not("aten::relu").run(
        str(result.ours.graph)
    )


# ---- debug=True against debug=False -------------------------------------------------------


@pytest.mark.parametrize(
    "model_name, capture, qconfig_name",
    [
        ("resnet18_style", "script", "per_channel"),
        ("mobilenet_v2_style", "trace", "per_channel"),
        ("transformer_mlp", "trace", "per_tensor"),
    ],
)
def test_debug_and_final_models_give_equal_outputs(quantized, model_name, capture, qconfig_name):
    final = quantized(model_name, capture, qconfig_name)
    debug = quantized(model_name, capture, qconfig_name, debug=True)
    FileCheck().check("aten::quantize_per_tensor").check("aten::dequantize").run(str(debug.ours.graph))
    with torch.no_grad():
        assert_bitwise_equal(debug.ours(final.example), final.ours(final.example), "debug and final outputs")
        assert_bitwise_equal(debug.ours(final.example), debug.reference(final.example), "debug outputs")


def test_debug_and_final_match_reference_where_quantized_pooling_rounds_differently(quantized):
    # MobileNetV2-style, per-tensor: the final model runs adaptive_avg_pool2d on
    # the quantized tensor (an integer mean, rounded by the kernel) while the
    # debug model averages the dequantized floats and requantizes them with the
    # same qparams; one pooled element lands one quantization step apart, in the
    # reference as in qgraph. So debug is compared with the reference's debug
    # and final with the reference's final, each bit for bit.
    final = quantized("mobilenet_v2_style", "trace", "per_tensor")
    debug = quantized("mobilenet_v2_style", "trace", "per_tensor", debug=True)
    x = final.example
    with torch.no_grad():
        assert not torch.equal(final.reference(x), debug.reference(x)), (
            "the reference's debug model now agrees: fold this case into the test above"
        )
        assert_bitwise_equal(debug.ours(x), debug.reference(x), "debug outputs")
        assert_bitwise_equal(final.ours(x), final.reference(x), "final outputs")


# ---- accuracy against float -------------------------------------------------------------------


class ConvNet(nn.Module):
    """conv-bn-relu twice with a residual add, max pooling, conv-relu, average pooling, linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.head_conv = nn.Conv2d(16, 32, 3, padding=1)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        x = self.pool(x + self.body(x))
        x = self.avgpool(self.relu(self.head_conv(x)))
        return self.fc(torch.flatten(x, 1))


SQNR_QCONFIGS = {
    "per_tensor": QConfig(activation=HistogramObserver.with_args(reduce_range=True), weight=default_weight_observer),
    "per_channel": get_default_qconfig("x86"),
}


@pytest.mark.parametrize("qconfig_name", SQNR_QCONFIGS)
def test_sqnr_against_float_above_30_db(qconfig_name):
    torch.manual_seed(0)
    model = randomize_batchnorm(ConvNet()).eval()
    shape = (2, 3, 16, 16)
    scripted = torch.jit.script(model)
    quantized_model = qgraph.quantize_jit(
        scripted, {"": SQNR_QCONFIGS[qconfig_name]}, calibrate, [calibration_batches(shape, 4)]
    )
    x = calibration_batches(shape, count=1, seed=1)[0]
    with torch.no_grad():
        assert sqnr(model(x), quantized_model(x)) > 30.0


# ---- deployment -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model_name, capture, qconfig_name",
    [
        ("resnet18_style", "script", "per_channel"),
        ("mobilenet_v2_style", "trace", "per_tensor"),
        ("transformer_mlp", "script", "per_tensor"),
    ],
)
def test_quantized_model_survives_save_and_load(quantized, model_name, capture, qconfig_name):
    result = quantized(model_name, capture, qconfig_name)
    buffer = io.BytesIO()
    torch.jit.save(result.ours, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    with torch.no_grad():
        assert_bitwise_equal(loaded(result.example), result.ours(result.example), "outputs after save/load")


# ---- inplace ----------------------------------------------------------------------------------


def _graph_texts(model: torch.jit.ScriptModule) -> dict[str, str]:
    return {
        f"{path}.{method}": str(module._c._get_method(method).graph)
        for path, module in model.named_modules()
        for method in module._c._method_names()
    }


@pytest.mark.parametrize("capture", CAPTURES)
def test_inplace_false_leaves_float_model_unchanged(capture):
    torch.manual_seed(0)
    model = randomize_batchnorm(ResNetLike(width=4, blocks_per_stage=1)).eval()
    x = torch.randn(1, 3, 32, 32)
    captured = _capture(model, x, capture)
    graphs_before = _graph_texts(captured)
    state_before = {k: v.clone() for k, v in captured.state_dict().items()}
    with torch.no_grad():
        output_before = captured(x)

    quantized_model = qgraph.quantize_jit(captured, {"": default_qconfig}, calibrate, [[x]], inplace=False)

    assert quantized_model is not captured
    assert _graph_texts(captured) == graphs_before
    state_after = captured.state_dict()
    assert state_after.keys() == state_before.keys()
    for name, value in state_before.items():
        assert_bitwise_equal(state_after[name], value, f"float model's {name}")
    with torch.no_grad():
        assert_bitwise_equal(captured(x), output_before, "float model outputs")


def test_inplace_true_returns_the_same_object_quantized():
    torch.manual_seed(0)
    model = randomize_batchnorm(ConvNet()).eval()
    x = torch.randn(1, 3, 16, 16)
    scripted = torch.jit.script(model)
    expected = reference_quantize_jit(scripted, {"": default_qconfig}, calibrate, [[x]])

    result = qgraph.quantize_jit(scripted, {"": default_qconfig}, calibrate, [[x]], inplace=True)

    assert result is scripted
    FileCheck().check("quantized::conv2d_relu").check("quantized::add").check("quantized::linear").run(
        str(scripted.graph)
    )
    with torch.no_grad():
        assert_bitwise_equal(scripted(x), expected(x))


# ---- qnnpack ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_name, capture", [("mobilenet_v2_style", "script"), ("transformer_mlp", "trace")])
def test_qnnpack_output_equals_reference(qnnpack_engine, model_name, capture):
    build, shape = MODELS[model_name]
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(*shape)
    captured = _capture(model, x, capture)
    qconfig_dict = {"": get_default_qconfig("qnnpack")}
    batches = calibration_batches(shape, count=2)

    ours = qgraph.quantize_jit(captured, qconfig_dict, calibrate, [batches])
    reference = reference_quantize_jit(captured, qconfig_dict, calibrate, [batches])

    with torch.no_grad():
        assert_bitwise_equal(ours(x), reference(x))

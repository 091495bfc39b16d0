"""The public API: the names DESIGN.md fixes, their signatures, input checks and inplace rules."""

import inspect

import pytest
import torch
import torch.nn as nn
from torch.ao.quantization import default_dynamic_qconfig, get_default_qconfig

import qgraph
from helpers.models import calibrate

SIGNATURES = {
    "fuse_conv_bn_jit": ["model", "inplace"],
    "prepare_jit": ["model", "qconfig_dict", "inplace"],
    "prepare_qat_jit": ["model", "qconfig_dict", "inplace"],
    "convert_jit": ["model", "inplace", "debug", "preserved_attrs", "lowering"],
    "quantize_jit": ["model", "qconfig_dict", "run_fn", "run_args", "inplace", "debug", "lowering"],
    "prepare_dynamic_jit": ["model", "qconfig_dict", "inplace"],
    "convert_dynamic_jit": ["model", "inplace", "debug", "preserved_attrs"],
    "quantize_dynamic_jit": ["model", "qconfig_dict", "inplace", "debug"],
    "script_qconfig": ["qconfig"],
    "script_qconfig_dict": ["qconfig_dict"],
    "capture": ["model", "example_inputs", "method"],
    "PercentileObserver": ["percentile", "mantissa_bits", "kwargs"],
    "EntropyObserver": ["bins", "mantissa_bits", "kwargs"],
    "MSEObserver": [
        "mantissa_bits",
        "dtype",
        "qscheme",
        "reduce_range",
        "quant_min",
        "quant_max",
        "factory_kwargs",
        "eps",
        "is_dynamic",
        "kwargs",
    ],
    "merge_observers": ["a", "b", "inplace"],
    "all_reduce_observers": ["model", "group"],
    "compare": ["float_model", "quantized_model", "inputs"],
    "sensitivity": ["model", "qconfig_dict", "calibration", "inputs", "k", "dynamic"],
    "draw": ["model", "path", "method"],
}
# Public modules, with the functions each exports.
MODULES = {
    "qat": [
        "enable_observer",
        "disable_observer",
        "enable_fake_quant",
        "disable_fake_quant",
        "freeze_bn_stats",
        "update_bn_stats",
    ],
}


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean([2, 3]))


@pytest.fixture
def model():
    torch.manual_seed(0)
    eager = ConvBN().eval()
    eager.bn.running_mean.uniform_(-0.5, 0.5)
    eager.bn.running_var.uniform_(0.5, 1.5)
    return torch.jit.script(eager)


# Keyword-only parameters: lowering comes after the reference's parameters, so positional calls keep their meaning.
KEYWORD_ONLY = {"convert_jit": {"lowering"}, "quantize_jit": {"lowering"}, "sensitivity": {"k", "dynamic"}}


def test_public_names_and_signatures_are_the_contract():
    assert sorted(qgraph.__all__) == sorted([*SIGNATURES, *MODULES])
    for name, parameters in SIGNATURES.items():
        signature = inspect.signature(getattr(qgraph, name))
        assert list(signature.parameters) == parameters, name
        keyword_only = {p.name for p in signature.parameters.values() if p.kind == inspect.Parameter.KEYWORD_ONLY}
        assert keyword_only == KEYWORD_ONLY.get(name, set()), name
    for name, functions in MODULES.items():
        module = getattr(qgraph, name)
        assert sorted(module.__all__) == sorted(functions), name
        for function in functions:
            assert list(inspect.signature(getattr(module, function)).parameters) == ["model"], function


@pytest.mark.parametrize("call", [qgraph.convert_jit, qgraph.quantize_jit])
def test_the_default_lowering_is_the_reference(call):
    assert inspect.signature(call).parameters["lowering"].default == "reference"


@pytest.mark.parametrize(
    "call",
    [
        lambda m: qgraph.prepare_jit(m, {"": get_default_qconfig("fbgemm")}),
        lambda m: qgraph.prepare_dynamic_jit(m, {"": default_dynamic_qconfig}),
        lambda m: qgraph.convert_jit(m),
        lambda m: qgraph.convert_dynamic_jit(m),
        lambda m: qgraph.fuse_conv_bn_jit(m),
        lambda m: qgraph.quantize_dynamic_jit(m, {"": default_dynamic_qconfig}),
        lambda m: qgraph.quantize_jit(m, {"": get_default_qconfig("fbgemm")}, calibrate, [[torch.randn(1, 3, 8, 8)]]),
    ],
    ids=["prepare", "prepare_dynamic", "convert", "convert_dynamic", "fuse", "quantize_dynamic", "quantize"],
)
def test_eager_module_is_refused_with_a_value_error(call):
    with pytest.raises(ValueError, match="(?i)script"):
        call(ConvBN().eval())


def test_qconfig_key_that_is_not_a_string_is_refused(model):
    with pytest.raises(ValueError, match="conv"):
        qgraph.prepare_jit(model, {nn.Conv2d: get_default_qconfig("fbgemm")})


def test_quantize_jit_needs_calibration(model):
    qconfig_dict = {"": get_default_qconfig("fbgemm")}
    with pytest.raises(ValueError, match="run_fn"):
        qgraph.quantize_jit(model, qconfig_dict, None, [[torch.randn(1, 3, 8, 8)]])
    with pytest.raises(ValueError, match="run_args"):
        qgraph.quantize_jit(model, qconfig_dict, calibrate, [])


def test_fuse_conv_bn_jit_leaves_the_input_alone(model):
    x = torch.randn(2, 3, 8, 8)
    before_graph, before_out = str(model.graph), model(x)
    fused = qgraph.fuse_conv_bn_jit(model)
    assert fused is not model
    assert str(model.graph) == before_graph
    torch.testing.FileCheck().check_not('name="bn"').run(str(fused.graph))
    torch.testing.assert_close(fused(x), before_out)
    assert torch.equal(model(x), before_out)


def test_fuse_conv_bn_jit_inplace_returns_the_same_object(model):
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    fused = qgraph.fuse_conv_bn_jit(model, inplace=True)
    assert fused is model
    torch.testing.FileCheck().check_not('name="bn"').run(str(model.graph))
    torch.testing.assert_close(model(x), expected)


def test_quantize_jit_inplace_false_keeps_the_float_model(model):
    x = torch.randn(2, 3, 8, 8)
    before_graph, before_out = str(model.graph), model(x)
    quantized = qgraph.quantize_jit(model, {"": get_default_qconfig("fbgemm")}, calibrate, [[x]])
    assert str(model.graph) == before_graph
    assert torch.equal(model(x), before_out)
    torch.testing.FileCheck().check("quantized::conv2d").check("quantized::linear").run(str(quantized.graph))


def test_quantize_jit_inplace_true_returns_the_same_object(model):
    x = torch.randn(2, 3, 8, 8)
    quantized = qgraph.quantize_jit(model, {"": get_default_qconfig("fbgemm")}, calibrate, [[x]], inplace=True)
    assert quantized is model
    torch.testing.FileCheck().check("quantized::conv2d").run(str(model.graph))

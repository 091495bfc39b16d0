"""End to end: dynamic quantization through qgraph's public API.

``qgraph.quantize_dynamic_jit`` (and ``prepare_dynamic_jit`` followed by
``convert_dynamic_jit``) on small models, scripted and traced, against two
oracles:

- the reference's graph mode, ``torch.ao.quantization.quantize_dynamic_jit``
  on the same captured model: same quantized ops, outputs equal bit for bit;
- eager ``torch.ao.quantization.quantize_dynamic`` on the float model: equal
  bit for bit wherever it quantizes the same ops. Eager swaps modules only,
  so a functional ``F.linear`` stays float there; those models are compared
  with an eager twin that holds the same weights in ``nn.Linear`` modules.

Where the two oracles legitimately differ, a comment at the test says why.

The ``debug=True`` model runs the float linear on dequantized weights and
activations (fp16: on the saturated float weight), so its output equals the
reference's debug model bit for bit but differs from the final model's
kernel by float rounding; the reference's debug and final models differ the
same way.

Embedding bags: the reference quantizes ``aten::embedding_bag`` weight-only
through ``prepare_jit`` / ``convert_jit`` with a ``PlaceholderObserver``
qconfig whose ``custom_op_name`` is ``embedding_bag_byte`` or
``embedding_bag_4bit``; its dynamic API leaves bags in float. Weight-only
quantization needs no calibration, so qgraph's dynamic API gives a bag with
such a qconfig exactly what the reference's static API gives; under any other
qconfig the bag stays float, as in the reference. The
``float_qparams_weight_only_qconfig`` / ``_4bit`` qconfigs (eager mode's per-row float qparams) do not apply to
graph mode: the reference's ``convert_jit`` fails on them ("a Tensor with 10
elements cannot be converted to Scalar", and qgraph's with the same message)
and its dynamic API ignores them; they serve here as eager mode's oracle only.

LSTM/GRU: the reference's graph mode leaves them in float, so eager
``quantize_dynamic(model, {nn.LSTM, nn.GRU, nn.Linear}, dtype)`` is the only
oracle (``tests/test_quantize_rnn.py`` covers the RNN variants in depth).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.ao.quantization import (
    PlaceholderObserver,
    QConfig,
    default_dynamic_qconfig,
    float16_dynamic_qconfig,
    float_qparams_weight_only_qconfig,
    float_qparams_weight_only_qconfig_4bit,
    per_channel_dynamic_qconfig,
    quantize_dynamic,
)
from torch.ao.quantization import convert_jit as reference_convert_jit
from torch.ao.quantization import prepare_jit as reference_prepare_jit
from torch.ao.quantization import quantize_dynamic_jit as reference_quantize_dynamic_jit
from torch.ao.quantization.quant_type import QuantType
from torch.testing import FileCheck

import qgraph
from helpers.models import capture, reloaded
from helpers.numerics import assert_bitwise_equal
from helpers.observers import graph_texts
from helpers.quant_dequant_reference import qparam_attributes
from helpers.quantized_reference import flat_outputs
from passes.rnn import rnn_float_reasons
from qgraph.report import float_op_report

CAPTURES = ("script", "trace")
INT8_QCONFIGS = {"per_tensor": default_dynamic_qconfig, "per_channel": per_channel_dynamic_qconfig}


def _both(captured: torch.jit.ScriptModule, qconfig_dict: dict, debug: bool = False):
    """(qgraph's, the reference's) dynamically quantized ``captured``."""
    ours = qgraph.quantize_dynamic_jit(captured, qconfig_dict, debug=debug)
    reference = reference_quantize_dynamic_jit(captured, qconfig_dict, debug=debug)
    return ours, reference


def _assert_same(actual, expected, what: str = "outputs") -> None:
    actual, expected = flat_outputs(actual), flat_outputs(expected)
    assert len(actual) == len(expected), what
    for a, e in zip(actual, expected):
        assert_bitwise_equal(a, e, what)


def _inlined(graph: torch._C.Graph) -> str:
    graph = graph.copy()
    torch._C._jit_pass_inline(graph)
    return str(graph)


def _assert_final_int8(graph: torch._C.Graph, dynamic_linears: int, float_linears: int = 0) -> None:
    """The finalized graph runs ``dynamic_linears`` dynamic kernels and nothing of the debug form."""
    text = str(graph)
    FileCheck().check_count("quantized::linear_dynamic(", dynamic_linears, exactly=True).run(text)
    FileCheck().check_count("aten::linear(", float_linears, exactly=True).run(text)
    FileCheck().check_not("aten::_choose_qparams_per_tensor").check_not("aten::quantize_per").check_not(
        "aten::dequantize"
    ).check_not("quantized::linear_prepack").run(text)


# --- Linear, int8 -------------------------------------------------------------------------------


class LinearAndFunctional(nn.Module):
    """An nn.Linear, then F.linear on a weight (and optional bias) the model stores."""

    def __init__(self, bias: bool):
        super().__init__()
        self.fc = nn.Linear(8, 6, bias=bias)
        self.weight = nn.Parameter(torch.randn(4, 6))
        self.bias = nn.Parameter(torch.randn(4)) if bias else None

    def forward(self, x):
        return F.linear(torch.relu(self.fc(x)), self.weight, self.bias)


class TwoLinears(nn.Module):
    """The eager twin of LinearAndFunctional: the functional linear as a module."""

    def __init__(self, model: LinearAndFunctional):
        super().__init__()
        self.fc = model.fc
        self.fc2 = nn.Linear(6, 4, bias=model.bias is not None)
        self.fc2.weight = model.weight
        if model.bias is not None:
            self.fc2.bias = model.bias

    def forward(self, x):
        return self.fc2(torch.relu(self.fc(x)))


@pytest.mark.parametrize("how", CAPTURES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("qconfig_name", INT8_QCONFIGS)
def test_module_and_functional_linear_become_linear_dynamic(qconfig_name, bias, how):
    torch.manual_seed(0)
    qconfig = INT8_QCONFIGS[qconfig_name]
    model = LinearAndFunctional(bias).eval()
    x = torch.randn(3, 8)
    ours, reference = _both(capture(model, (x,), how), {"": qconfig})
    _assert_final_int8(ours.graph, dynamic_linears=2)
    _assert_same(ours(x), reference(x), "qgraph vs reference")
    # Eager leaves F.linear in float; its twin holds the same weight in an nn.Linear.
    eager = quantize_dynamic(TwoLinears(model).eval(), {nn.Linear: qconfig}, dtype=torch.qint8)
    _assert_same(ours(x), eager(x), "qgraph vs eager")
    _assert_same(reloaded(ours)(x), ours(x), "saved and loaded")


class Sub(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(x)


class SubThenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.sub = Sub()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.sub(x))


@pytest.mark.parametrize("how", CAPTURES)
def test_qconfig_on_one_submodule_path_only(how):
    torch.manual_seed(0)
    model = SubThenLinear().eval()
    x = torch.randn(3, 8)
    qconfig_dict = {"sub.fc": default_dynamic_qconfig}
    ours, reference = _both(capture(model, (x,), how), qconfig_dict)
    _assert_final_int8(ours.graph, dynamic_linears=1, float_linears=1)
    _assert_same(ours(x), reference(x), "qgraph vs reference")
    eager = quantize_dynamic(model, qconfig_dict, dtype=torch.qint8)
    _assert_same(ours(x), eager(x), "qgraph vs eager")


class SharedWeight(nn.Module):
    """A submodule's weight read again by a functional linear in the parent."""

    def __init__(self):
        super().__init__()
        self.sub = nn.Linear(8, 8)
        self.weight = self.sub.weight

    def forward(self, x):
        return F.linear(self.sub(x), self.weight)


class SharedWeightTwin(nn.Module):
    def __init__(self, model: SharedWeight):
        super().__init__()
        self.sub = model.sub
        self.fc = nn.Linear(8, 8, bias=False)
        self.fc.weight = model.weight

    def forward(self, x):
        return self.fc(self.sub(x))


@pytest.mark.parametrize(
    "how, path, dynamic_linears",
    [
        ("script", "", 2),
        ("trace", "", 2),
        ("script", "sub", 1),
        # Traced, the parent reads the shared weight and passes it into sub's
        # graph, so the weight is observed (and quantized) in the parent and
        # the reference also turns the parent's F.linear into a dynamic linear,
        # although the parent has no qconfig; eager leaves it float.
        ("trace", "sub", 2),
    ],
)
def test_weight_shared_by_submodule_and_functional_call(how, path, dynamic_linears):
    torch.manual_seed(0)
    model = SharedWeight().eval()
    x = torch.randn(3, 8)
    ours, reference = _both(capture(model, (x,), how), {path: default_dynamic_qconfig})
    _assert_final_int8(ours.graph, dynamic_linears=dynamic_linears, float_linears=2 - dynamic_linears)
    _assert_same(ours(x), reference(x), "qgraph vs reference")
    if path == "":
        eager = quantize_dynamic(SharedWeightTwin(model).eval(), {nn.Linear}, dtype=torch.qint8)
        _assert_same(ours(x), eager(x), "qgraph vs eager")
    elif how == "script":
        eager = quantize_dynamic(model, {"sub": default_dynamic_qconfig}, dtype=torch.qint8)
        _assert_same(ours(x), eager(x), "qgraph vs eager")


class Branches(nn.Module):
    def __init__(self):
        super().__init__()
        self.then_fc = nn.Linear(8, 4)
        self.else_fc = nn.Linear(8, 4)

    def forward(self, x, flag: bool):
        if flag:
            y = self.then_fc(x)
        else:
            y = self.else_fc(x)
        return y


@pytest.mark.parametrize("qconfig_name", INT8_QCONFIGS)
def test_linears_in_both_branches_of_an_if(qconfig_name):
    # Scripted only: tracing records the branch the example input takes.
    torch.manual_seed(0)
    qconfig = INT8_QCONFIGS[qconfig_name]
    model = Branches().eval()
    x = torch.randn(3, 8)
    ours, reference = _both(torch.jit.script(model), {"": qconfig})
    FileCheck().check("prim::If").check("quantized::linear_dynamic(").check("quantized::linear_dynamic(").run(
        str(ours.graph)
    )
    _assert_final_int8(ours.graph, dynamic_linears=2)
    eager = quantize_dynamic(model, {nn.Linear: qconfig}, dtype=torch.qint8)
    for flag in (True, False):
        _assert_same(ours(x, flag), reference(x, flag), f"qgraph vs reference, flag={flag}")
        _assert_same(ours(x, flag), eager(x, flag), f"qgraph vs eager, flag={flag}")


class Forked(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = Sub()
        self.out = nn.Linear(8, 4)

    def forward(self, x):
        future = torch.jit.fork(self.inner, x)
        return self.out(torch.jit.wait(future))


@pytest.mark.parametrize("how", CAPTURES)
def test_linear_inside_a_forked_call(how):
    torch.manual_seed(0)
    model = Forked().eval()
    x = torch.randn(3, 8)
    ours, reference = _both(capture(model, (x,), how), {"": default_dynamic_qconfig})
    _assert_final_int8(ours.graph, dynamic_linears=2)
    _assert_same(ours(x), quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)(x), "qgraph vs eager")
    if how == "script":
        # Reference bug: scripted, it inlines the forked call but never
        # observes the forked linear's weight, so that linear runs in float on
        # a dequantized input; qgraph quantizes it as eager does.
        FileCheck().check_count("quantized::linear_dynamic(", 1, exactly=True).run(str(reference.graph))
        FileCheck().check("aten::linear(").run(str(reference.graph))
    else:
        _assert_same(ours(x), reference(x), "qgraph vs reference")
    _assert_same(reloaded(ours)(x), ours(x), "saved and loaded")


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.parametrize("how", CAPTURES)
@pytest.mark.parametrize("qconfig_name", INT8_QCONFIGS)
def test_debug_graph_computes_the_reference_numerics(qconfig_name, how):
    torch.manual_seed(0)
    qconfig = INT8_QCONFIGS[qconfig_name]
    x = torch.randn(3, 8)
    captured = capture(TwoLayers(), (x,), how)
    ours, reference = _both(captured, {"": qconfig}, debug=True)
    weight_quantize = "aten::quantize_per_tensor(" if qconfig_name == "per_tensor" else "aten::quantize_per_channel("
    check = FileCheck()
    for _ in range(2):
        check.check("aten::_choose_qparams_per_tensor(").check("aten::quantize_per_tensor(").check(
            "aten::dequantize("
        ).check(weight_quantize).check("aten::dequantize(").check("aten::linear(")
    check.check_not("quantized::").run(_inlined(ours.graph))
    _assert_same(ours(x), reference(x), "qgraph debug vs reference debug")
    final = qgraph.quantize_dynamic_jit(captured, {"": qconfig})
    # Float linear on dequantized values vs the integer kernel: equal up to float rounding.
    torch.testing.assert_close(ours(x), final(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("how", CAPTURES)
@pytest.mark.parametrize("qconfig_name", INT8_QCONFIGS)
def test_debug_weight_qparams_are_the_weight_observers(qconfig_name, how):
    torch.manual_seed(0)
    qconfig = INT8_QCONFIGS[qconfig_name]
    model = TwoLayers().eval()
    x = torch.randn(3, 8)
    ours, reference = _both(capture(model, (x,), how), {"": qconfig}, debug=True)
    attributes = qparam_attributes(ours)
    # Activation attributes of unnamed values carry the value's number, which
    # depends on how each pipeline numbered the graph; weights are named.
    weights = {k: v for k, v in attributes.items() if ":weight" in k}
    reference_weights = {k: v for k, v in qparam_attributes(reference).items() if ":weight" in k}
    assert weights.keys() == reference_weights.keys()
    for key, value in reference_weights.items():
        assert type(weights[key]) is type(value), key
        assert torch.equal(weights[key], value) if isinstance(value, torch.Tensor) else weights[key] == value, key
    for name in ("fc1", "fc2"):
        observer = qconfig.weight()
        observer(getattr(model, name).weight.detach())
        scale, zero_point = observer.calculate_qparams()
        prefix = f"{name}:weight"
        scales = [v for k, v in attributes.items() if k.startswith(prefix) and k.endswith("_scale_0")]
        zero_points = [v for k, v in attributes.items() if k.startswith(prefix) and k.endswith("_zero_point_0")]
        assert len(scales) == 1 and len(zero_points) == 1, sorted(attributes)
        if qconfig_name == "per_tensor":
            assert scales[0] == scale.item() and zero_points[0] == zero_point.item()
        else:
            assert torch.equal(scales[0], scale) and torch.equal(zero_points[0], zero_point)


# --- Linear, fp16 -------------------------------------------------------------------------------


@pytest.mark.parametrize("how", CAPTURES)
def test_fp16_debug_graph_saturates_the_weight_before_a_float_linear(how):
    torch.manual_seed(0)
    x = torch.randn(3, 8)
    ours, reference = _both(capture(TwoLayers(), (x,), how), {"": float16_dynamic_qconfig}, debug=True)
    text = _inlined(ours.graph)
    FileCheck().check("aten::_saturate_weight_to_fp16(").check("aten::linear(").check(
        "aten::_saturate_weight_to_fp16("
    ).check("aten::linear(").run(text)
    FileCheck().check_not("aten::quantize_per").check_not("aten::dequantize").check_not(
        "aten::_choose_qparams_per_tensor"
    ).check_not("quantized::").run(text)
    _assert_same(ours(x), reference(x), "qgraph debug vs reference debug")


@pytest.mark.parametrize("how", CAPTURES)
def test_fp16_final_graph_runs_linear_dynamic_fp16(how):
    torch.manual_seed(0)
    model = TwoLayers().eval()
    x = torch.randn(3, 8)
    ours, reference = _both(capture(model, (x,), how), {"": float16_dynamic_qconfig})
    text = str(ours.graph)
    FileCheck().check_count("quantized::linear_dynamic_fp16(", 2, exactly=True).run(text)
    FileCheck().check_not("aten::linear").check_not("aten::quantize_per").check_not("aten::dequantize").check_not(
        "quantized::linear_prepack_fp16"
    ).run(text)
    _assert_same(ours(x), reference(x), "qgraph vs reference")
    _assert_same(ours(x), quantize_dynamic(model, {nn.Linear}, dtype=torch.float16)(x), "qgraph vs eager")
    _assert_same(reloaded(ours)(x), ours(x), "saved and loaded")


class OneLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)


@pytest.mark.parametrize("how", CAPTURES)
def test_fp16_weight_outside_the_fp16_range_saturates_like_eager(how):
    torch.manual_seed(0)
    model = OneLinear().eval()
    with torch.no_grad():
        model.fc.weight[0, 0] = 1e6
        model.fc.weight[1, 1] = -1e6
    x = torch.randn(2, 4)
    ours, reference = _both(capture(model, (x,), how), {"": float16_dynamic_qconfig})
    eager = quantize_dynamic(model, {nn.Linear}, dtype=torch.float16)
    largest = torch.finfo(torch.float16).max
    assert eager.fc.weight()[0, 0].item() == largest and eager.fc.weight()[1, 1].item() == -largest
    _assert_same(ours(x), eager(x), "qgraph vs eager")
    _assert_same(ours(x), reference(x), "qgraph vs reference")
    assert ours(x).isfinite().all()


# --- embedding_bag, weight only -------------------------------------------------------------------


def _embedding_bag_qconfig(op_name: str) -> QConfig:
    return QConfig(
        activation=PlaceholderObserver.with_args(dtype=torch.float, custom_op_name=op_name),
        weight=PlaceholderObserver.with_args(custom_op_name=op_name),
    )


EMBEDDING_BAG_OPS = {"byte": "embedding_bag_byte", "4bit": "embedding_bag_4bit"}
# Eager mode's weight-only qconfigs for the same rowwise formats.
EAGER_EMBEDDING_BAG = {
    "byte": (float_qparams_weight_only_qconfig, torch.quint8),
    "4bit": (float_qparams_weight_only_qconfig_4bit, torch.quint4x2),
}


class Bag(nn.Module):
    def __init__(self, padding_idx=None):
        super().__init__()
        self.bag = nn.EmbeddingBag(10, 12, mode="sum", include_last_offset=True, padding_idx=padding_idx)

    def forward(self, indices, offsets):
        return self.bag(indices, offsets)


def _bag_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([0, 1, 2, 3, 4, 9, 7]), torch.tensor([0, 2, 5, 7])


@pytest.mark.parametrize("how", CAPTURES)
@pytest.mark.parametrize("bits", EMBEDDING_BAG_OPS)
def test_embedding_bag_weight_only_is_prepacked_and_quantized(bits, how):
    # The reference quantizes bags through its static API only (see the module docstring).
    torch.manual_seed(0)
    inputs = _bag_inputs()
    model = Bag().eval()
    captured = capture(model, inputs, how)
    qconfig_dict = {"bag": _embedding_bag_qconfig(EMBEDDING_BAG_OPS[bits])}
    prepared = qgraph.prepare_jit(captured, qconfig_dict)
    prepared(*inputs)
    ours = qgraph.convert_jit(prepared)
    reference_prepared = reference_prepare_jit(captured, qconfig_dict)
    reference_prepared(*inputs)
    reference = reference_convert_jit(reference_prepared)
    op = f"quantized::embedding_bag_{bits}_rowwise_offsets"
    FileCheck().check_count(op + "(", 1, exactly=True).check_not("aten::embedding_bag").run(str(ours.graph))
    FileCheck().check_not("_prepack").check_not("aten::dequantize").run(str(ours.graph))
    (bag,) = [n for n in ours.graph.nodes() if n.kind() == op]
    # Prepacked once at convert: the packed weight is a frozen constant.
    assert bag.inputsAt(0).node().kind() == "prim::Constant"
    assert bag.inputsAt(0).toIValue().dtype == torch.uint8
    _assert_same(ours(*inputs), reference(*inputs), "qgraph vs reference")
    _assert_same(reloaded(ours)(*inputs), ours(*inputs), "saved and loaded")
    eager_qconfig, eager_dtype = EAGER_EMBEDDING_BAG[bits]
    eager = quantize_dynamic(model, {nn.EmbeddingBag: eager_qconfig}, dtype=eager_dtype)
    if bits == "4bit":
        _assert_same(ours(*inputs), eager(*inputs), "qgraph vs eager")
    else:
        # Eager's 8-bit rows get their offset through the observer's float
        # zero point, graph mode's prepack takes the row minimum directly, so
        # the reference (equal to qgraph above) and eager differ in the last bit.
        torch.testing.assert_close(ours(*inputs), eager(*inputs), rtol=0, atol=1e-6)


@pytest.mark.parametrize("bits", EMBEDDING_BAG_OPS)
def test_dynamic_api_quantizes_embedding_bag_weight_only(bits):
    # Weight-only quantization needs no calibration, so the dynamic API can
    # give exactly what the reference's static API gives.
    torch.manual_seed(0)
    inputs = _bag_inputs()
    captured = capture(Bag(), inputs, "script")
    qconfig_dict = {"bag": _embedding_bag_qconfig(EMBEDDING_BAG_OPS[bits])}
    ours = qgraph.quantize_dynamic_jit(captured, qconfig_dict)
    reference_prepared = reference_prepare_jit(captured, qconfig_dict)
    reference_prepared(*inputs)
    reference = reference_convert_jit(reference_prepared)
    FileCheck().check(f"quantized::embedding_bag_{bits}_rowwise_offsets(").run(str(ours.graph))
    _assert_same(ours(*inputs), reference(*inputs), "qgraph vs reference")


class BagThenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.bag = nn.EmbeddingBag(10, 12, mode="sum", include_last_offset=True)
        self.head = nn.Linear(12, 3)

    def forward(self, indices, offsets):
        return self.head(self.bag(indices, offsets))


@pytest.mark.parametrize("how", CAPTURES)
def test_dynamic_api_leaves_bag_float_under_a_linear_qconfig(how):
    # Only a qconfig asking for an embedding_bag kernel quantizes the bag.
    torch.manual_seed(0)
    inputs = _bag_inputs()
    captured = capture(BagThenLinear(), inputs, how)
    ours, reference = _both(captured, {"": default_dynamic_qconfig})
    FileCheck().check("aten::embedding_bag(").check("quantized::linear_dynamic(").run(_inlined(ours.graph))
    _assert_same(ours(*inputs), reference(*inputs), "qgraph vs reference")


@pytest.mark.parametrize("how", CAPTURES)
@pytest.mark.parametrize("bits", EMBEDDING_BAG_OPS)
def test_dynamic_api_quantizes_bag_and_linear_each_by_its_qconfig(bits, how):
    torch.manual_seed(0)
    inputs = _bag_inputs()
    captured = capture(BagThenLinear(), inputs, how)
    qconfig_dict = {"": default_dynamic_qconfig, "bag": _embedding_bag_qconfig(EMBEDDING_BAG_OPS[bits])}
    ours = qgraph.quantize_dynamic_jit(captured, qconfig_dict)
    graph = _inlined(ours.graph)
    FileCheck().check_not("aten::embedding_bag(").run(graph)
    FileCheck().check(f"quantized::embedding_bag_{bits}_rowwise_offsets(").check("quantized::linear_dynamic(").run(
        graph
    )
    # The bag's output, from the reference's static API, feeds the reference's dynamic linear.
    reference_bag = reference_prepare_jit(capture(Bag(), inputs, how), {"bag": qconfig_dict["bag"]})
    reference_bag.bag.weight = captured.bag.weight
    reference_bag = reference_convert_jit(reference_bag)
    head = reference_quantize_dynamic_jit(torch.jit.script(captured.head), {"": default_dynamic_qconfig})
    _assert_same(ours(*inputs), head(reference_bag(*inputs)), "qgraph vs reference")


@pytest.mark.parametrize("how", CAPTURES)
@pytest.mark.parametrize("bits", EMBEDDING_BAG_OPS)
def test_embedding_bag_with_padding_idx_is_an_error(bits, how):
    torch.manual_seed(0)
    inputs = _bag_inputs()
    captured = capture(Bag(padding_idx=0), inputs, how)
    prepared = qgraph.prepare_jit(captured, {"bag": _embedding_bag_qconfig(EMBEDDING_BAG_OPS[bits])})
    prepared(*inputs)
    with pytest.raises(RuntimeError, match="padding_idx"):
        qgraph.convert_jit(prepared)


# --- LSTM / GRU -----------------------------------------------------------------------------------

RNN_DTYPES = {"int8": (torch.qint8, default_dynamic_qconfig), "fp16": (torch.float16, float16_dynamic_qconfig)}


class LSTMLanguageModel(nn.Module):
    def __init__(self, proj_size: int = 0):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.rnn = nn.LSTM(8, 12, num_layers=2, proj_size=proj_size)
        self.head = nn.Linear(proj_size or 12, 20)

    def forward(self, tokens, h0, c0):
        out, (h, c) = self.rnn(self.embed(tokens), (h0, c0))
        return self.head(out), h, c


def _language_model_inputs(proj_size: int = 0) -> tuple[torch.Tensor, ...]:
    return torch.randint(0, 20, (5, 2)), torch.randn(2, 2, proj_size or 12), torch.randn(2, 2, 12)


class GRUTagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(6, 10, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(20, 3)

    def forward(self, x):
        out, h = self.rnn(x)
        return self.fc(out), h


@pytest.mark.parametrize("how", CAPTURES)
@pytest.mark.parametrize("dtype_name", RNN_DTYPES)
@pytest.mark.parametrize("model_name", ["lstm", "gru"])
def test_rnn_model_matches_eager_quantize_dynamic(model_name, dtype_name, how):
    torch.manual_seed(0)
    dtype, qconfig = RNN_DTYPES[dtype_name]
    if model_name == "lstm":
        model, inputs, rnn_op = LSTMLanguageModel().eval(), _language_model_inputs(), "lstm"
    else:
        model, inputs, rnn_op = GRUTagger().eval(), (torch.randn(2, 5, 6),), "gru"
    quantized = qgraph.quantize_dynamic_jit(capture(model, inputs, how), {"": qconfig})
    linear_op = "quantized::linear_dynamic(" if dtype == torch.qint8 else "quantized::linear_dynamic_fp16("
    text = str(quantized.graph)
    FileCheck().check_count(f"aten::quantized_{rnn_op}(", 1, exactly=True).check_not(f"aten::{rnn_op}(").run(text)
    FileCheck().check_count(linear_op, 1, exactly=True).check_not("aten::linear(").run(text)
    eager = quantize_dynamic(model, {nn.LSTM, nn.GRU, nn.Linear}, dtype=dtype)
    _assert_same(quantized(*inputs), eager(*inputs), "qgraph vs eager")
    _assert_same(reloaded(quantized)(*inputs), quantized(*inputs), "saved and loaded")


PROJECTION_REASON = "proj_size"


@pytest.mark.parametrize("how", CAPTURES)
def test_lstm_with_projection_stays_float_with_a_reason(how):
    torch.manual_seed(0)
    model = LSTMLanguageModel(proj_size=6).eval()
    inputs = _language_model_inputs(proj_size=6)
    captured = capture(model, inputs, how)
    qconfig_dict = {"": default_dynamic_qconfig}
    (foreseen,) = rnn_float_reasons(captured, qconfig_dict)
    prepared = qgraph.prepare_dynamic_jit(captured, qconfig_dict)
    assert rnn_float_reasons(prepared) == [foreseen]
    assert foreseen[0] == "rnn" and PROJECTION_REASON in foreseen[1]
    quantized = qgraph.convert_dynamic_jit(prepared)
    text = str(quantized.graph)
    FileCheck().check("aten::lstm(").check_not("aten::quantized_lstm").run(text)
    FileCheck().check_count("quantized::linear_dynamic(", 1, exactly=True).run(text)
    # Eager swaps in a quantized LSTM that has no projection and fails at run
    # time on these inputs; with the LSTM left float it is the oracle.
    eager = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    _assert_same(quantized(*inputs), eager(*inputs), "qgraph vs eager with the LSTM in float")


def test_report_says_why_a_projected_lstm_stays_float():
    torch.manual_seed(0)
    inputs = _language_model_inputs(proj_size=6)
    captured = capture(LSTMLanguageModel(proj_size=6), inputs, "script")
    qconfig_dict = {"": default_dynamic_qconfig}
    quantized = qgraph.quantize_dynamic_jit(captured, qconfig_dict)
    report = float_op_report(quantized, qconfig_dict, QuantType.DYNAMIC)
    (entry,) = [e for e in report.entries if e.kind == "aten::lstm"]
    assert PROJECTION_REASON in entry.detail or PROJECTION_REASON in entry.reason


# --- the API contract -----------------------------------------------------------------------------


@pytest.mark.parametrize("how", CAPTURES)
def test_prepare_then_convert_equals_quantize(how):
    torch.manual_seed(0)
    model = LSTMLanguageModel().eval()
    inputs = _language_model_inputs()
    captured = capture(model, inputs, how)
    qconfig_dict = {"": default_dynamic_qconfig}
    two_steps = qgraph.convert_dynamic_jit(qgraph.prepare_dynamic_jit(captured, qconfig_dict))
    one_step = qgraph.quantize_dynamic_jit(captured, qconfig_dict)
    _assert_same(two_steps(*inputs), one_step(*inputs), "prepare + convert vs quantize")


def _state(module: torch.jit.ScriptModule) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in module.state_dict().items()}


@pytest.mark.parametrize("how", CAPTURES)
def test_inplace_false_leaves_the_input_model_unchanged(how):
    torch.manual_seed(0)
    inputs = _language_model_inputs()
    captured = capture(LSTMLanguageModel(), inputs, how)
    qconfig_dict = {"": default_dynamic_qconfig}
    graphs, state, output = graph_texts(captured), _state(captured), captured(*inputs)

    qgraph.quantize_dynamic_jit(captured, qconfig_dict)
    prepared = qgraph.prepare_dynamic_jit(captured, qconfig_dict)
    prepared_graphs, prepared_state = graph_texts(prepared), _state(prepared)
    qgraph.convert_dynamic_jit(prepared)

    assert graph_texts(captured) == graphs
    assert _state(captured).keys() == state.keys()
    for name, tensor in state.items():
        assert_bitwise_equal(_state(captured)[name], tensor, name)
    _assert_same(captured(*inputs), output, "the float model")
    assert graph_texts(prepared) == prepared_graphs
    assert all(torch.equal(_state(prepared)[k], v) for k, v in prepared_state.items())

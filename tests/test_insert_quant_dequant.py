"""passes.insert_quant_dequant against the reference's _jit_pass_insert_quant_dequant.

Inputs are prepared and calibrated with the reference's prepare_jit (the
observer shape qgraph's prepare produces too). Each test compares with the
reference run on the same calibrated model: qparams attributes (names and
values), the inlined forward graph's node kinds, and outputs, bit for bit.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.ao.quantization import (
    PlaceholderObserver,
    QConfig,
    default_dynamic_qconfig,
    default_per_channel_qconfig,
    default_qconfig,
    float16_dynamic_qconfig,
    quantize_jit,
)
from torch.ao.quantization.quant_type import QuantType
from torch.testing import FileCheck

import qgraph
from helpers.quant_dequant_reference import (
    assert_same_outputs,
    assert_same_qparams,
    calibrated,
    node_kinds,
    observer_children,
    reference_insert_quant_dequant,
    script_or_trace,
)
from passes import insert_observers, insert_quant_dequant


def check_against_reference(model, data, qconfig_dict, *, tracing=False, dynamic=False):
    """Prepare + calibrate with the reference, convert with both; assert everything matches."""
    scripted = script_or_trace(model, data[0], tracing)
    prepared = calibrated(scripted, qconfig_dict, [] if dynamic else data, dynamic=dynamic)
    quant_type = QuantType.DYNAMIC if dynamic else QuantType.STATIC
    reference = reference_insert_quant_dequant(prepared, quant_type)
    ours = insert_quant_dequant(prepared, "forward", False, True, quant_type)
    assert isinstance(ours, torch.jit.ScriptModule)
    assert observer_children(ours) == []
    assert_same_qparams(ours, reference)
    assert node_kinds(ours.graph) == node_kinds(reference.graph)
    for args in data:
        assert_same_outputs(ours(*args), reference(*args))
    return ours, reference


TRACING = pytest.mark.parametrize("tracing", [False, True], ids=["scripted", "traced"])


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x)


@TRACING
def test_conv_gets_quant_dequant_for_input_weight_and_output(tracing):
    torch.manual_seed(0)
    data = [(torch.randn(2, 3, 8, 8),)]
    ours, _ = check_against_reference(ConvNet(), data, {"": default_qconfig}, tracing=tracing)
    FileCheck().check_count("aten::quantize_per_tensor", 3, exactly=True).check_not("_observer_").run(str(ours.graph))
    # the submodule keeps its own quantized weight and qparams attributes
    FileCheck().check('prim::GetAttr[name="weight').check("aten::quantize_per_tensor").check_next(
        "aten::dequantize"
    ).run(str(ours.conv.graph))


def test_per_channel_weight_uses_quantize_per_channel_with_axis():
    torch.manual_seed(0)
    data = [(torch.randn(2, 3, 8, 8),)]
    ours, _ = check_against_reference(ConvNet(), data, {"": default_per_channel_qconfig})
    FileCheck().check("aten::quantize_per_channel").check_next("aten::dequantize").run(str(ours.conv.graph))
    axis_names = [n for n, _ in torch._C._jit_debug_module_iterators(ours.conv._c)["named_attributes"] if "_axis_" in n]
    assert len(axis_names) == 1


class LinearNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(x)


@TRACING
def test_linear(tracing):
    torch.manual_seed(1)
    check_against_reference(LinearNet(), [(torch.randn(4, 5),)], {"": default_qconfig}, tracing=tracing)


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 6)
        self.fc2 = nn.Linear(6, 6)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = Inner()
        self.second = Inner()
        self.skipped = nn.Linear(6, 6)

    def forward(self, x):
        return self.skipped(self.second(self.first(x)))


@TRACING
def test_nested_submodules_with_different_qconfigs_and_a_skipped_one(tracing):
    torch.manual_seed(2)
    qconfig_dict = {"": default_qconfig, "second": default_per_channel_qconfig, "skipped": None}
    ours, _ = check_against_reference(Nested(), [(torch.randn(3, 6),)], qconfig_dict, tracing=tracing)
    FileCheck().check_not("aten::quantize").run(str(ours.skipped.graph))


class GeneralOps(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.conv2 = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        y = F.max_pool2d(y, 2)
        y = F.relu(y)
        y = F.avg_pool2d(y, 1)
        y = torch.clamp(y, -0.5, 0.5)
        z = self.conv2(y)
        c = torch.cat([y, z], 1)
        s = c + c
        return torch.flatten(s, 1), torch.sigmoid(z)


@TRACING
def test_general_ops_chain_requantizes_value_ops_with_input_qparams(tracing):
    torch.manual_seed(3)
    ours, _ = check_against_reference(
        GeneralOps(), [(torch.randn(1, 3, 10, 10),)], {"": default_qconfig}, tracing=tracing
    )
    FileCheck().check("aten::max_pool2d").check("aten::avg_pool2d").check("aten::q_scale").check_next(
        "aten::q_zero_point"
    ).check_next("prim::dtype").check_next("aten::quantize_per_tensor").run(str(ours.graph))
    # clamp bounds are quantized like the tensor: scalar_tensor -> quantize -> dequantize -> item
    FileCheck().check("aten::scalar_tensor").check("aten::item").check("aten::clamp").run(str(ours.graph))


class ScalarAfterLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 4)
        self.fc2 = nn.Linear(4, 4)

    def forward(self, x):
        # Traced, each Python float becomes a 0-dim tensor constant.
        return self.fc2(self.fc1(x) + 1.0) * 2.0


def calibrate(model, data):
    for args in data:
        model(*args)


@TRACING
def test_add_and_mul_with_a_scalar_are_general_ops_like_the_reference(tracing):
    torch.manual_seed(4)
    data = [(torch.randn(5, 4),)]
    with pytest.warns(UserWarning, match="scalar"):
        ours, _ = check_against_reference(ScalarAfterLinear(), data, {"": default_qconfig}, tracing=tracing)
    # Both outputs are requantized with their input's qparams.
    FileCheck().check("aten::add").check("aten::q_scale").check("aten::quantize_per_tensor").check("aten::mul").check(
        "aten::q_scale"
    ).check("aten::quantize_per_tensor").run(str(ours.graph))

    model = script_or_trace(ScalarAfterLinear(), data[0], tracing)
    qconfig_dict = {"": default_qconfig}
    for debug in (True, False):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = quantize_jit(model, qconfig_dict, calibrate, [data], debug=debug)
            quantized = qgraph.quantize_jit(model, qconfig_dict, calibrate, [data], debug=debug)
        assert_same_outputs(quantized(*data[0]), reference(*data[0]))
        if not debug:
            FileCheck().check("quantized::add_scalar").check("quantized::linear").check("quantized::mul_scalar").run(
                str(quantized.graph)
            )


class IntArithmeticBesideConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3)

    def forward(self, x):
        elements = x.size(2) * x.size(3) + 1
        return self.conv(x).flatten(2)[:, :, : elements - 1]


def test_scalar_warning_is_only_for_tensor_ops_on_quantized_inputs():
    # int arithmetic on sizes is an aten::mul / aten::add with a scalar too, and not the ops the
    # warning is about.
    torch.manual_seed(4)
    data = [(torch.randn(1, 3, 6, 6),)]
    prepared = calibrated(torch.jit.script(IntArithmeticBesideConv().eval()), {"": default_qconfig}, data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        insert_quant_dequant(prepared, "forward", False, True, QuantType.STATIC)
    assert not [w for w in caught if "scalar" in str(w.message)]


class Branches(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 3)
        self.conv2 = nn.Conv2d(3, 3, 3)

    def forward(self, x, flag: bool):
        if flag:
            y = self.conv1(x)
        else:
            y = self.conv2(x)
        return F.max_pool2d(y, 2)


def test_if_branches_each_quantize_their_output():
    torch.manual_seed(4)
    data = [(torch.randn(1, 3, 8, 8), True), (torch.randn(1, 3, 8, 8), False)]
    ours, _ = check_against_reference(Branches(), data, {"": default_qconfig})
    FileCheck().check("prim::If").check("aten::quantize_per_tensor").check("aten::quantize_per_tensor").run(
        str(ours.graph)
    )


class SharedBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = ConvNet()
        self.b = ConvNet()
        self.b.conv = nn.Conv2d(4, 4, 3)

    def forward(self, x):
        return self.b(self.a(x))


class TwoConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 3)
        self.conv2 = nn.Conv2d(3, 3, 3)

    def forward(self, x):
        return self.conv2(self.conv1(x))


def test_shared_class_type_keeps_one_graph_and_per_instance_qparams():
    torch.manual_seed(5)
    data = [(torch.randn(1, 3, 10, 10),)]
    ours, reference = check_against_reference(TwoConvs(), data, {"": default_qconfig})
    assert ours.conv1._c._type() == ours.conv2._c._type()
    names = [n for n, _ in torch._C._jit_debug_module_iterators(ours.conv1._c)["named_attributes"] if "_scale_" in n]
    assert names == [
        n for n, _ in torch._C._jit_debug_module_iterators(ours.conv2._c)["named_attributes"] if "_scale_" in n
    ]
    assert ours.conv1._c.getattr(names[0]) != ours.conv2._c.getattr(names[0])
    FileCheck().check("aten::quantize_per_tensor").check_next("aten::dequantize").check(
        'prim::CallMethod[name="_conv_forward"]'
    ).run(str(ours.conv1.graph))
    FileCheck().check_not("aten::quantize").run(str(ours.conv1._c._get_method("_conv_forward").graph))


class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 3)
        self.conv2 = nn.Conv2d(3, 3, 3)

    def forward(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        return self.conv1(x), self.conv2(x)


@TRACING
def test_tuple_output_is_dequantized_as_a_tuple(tracing):
    torch.manual_seed(6)
    ours, _ = check_against_reference(TupleOut(), [(torch.randn(1, 3, 6, 6),)], {"": default_qconfig}, tracing=tracing)
    FileCheck().check("prim::TupleConstruct").check_next("aten::dequantize").check("return").run(str(ours.graph))


class SizeUser(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3)

    def forward(self, x):
        y = self.conv(x)
        n = len(y) + y.dim() + y.numel()
        return y.view(y.size(0), -1), n


def test_dequantize_feeding_only_size_len_dim_numel_is_dropped():
    torch.manual_seed(7)
    ours, _ = check_against_reference(SizeUser(), [(torch.randn(1, 3, 6, 6),)], {"": default_qconfig})
    queries = [n for n in ours.graph.nodes() if n.kind() in ("aten::size", "aten::len", "aten::dim", "aten::numel")]
    assert sorted(n.kind() for n in queries) == ["aten::dim", "aten::len", "aten::numel", "aten::size"]
    for query in queries:
        assert query.inputsAt(0).node().kind() == "aten::quantize_per_tensor"


def test_inplace_false_leaves_the_prepared_model_alone():
    torch.manual_seed(8)
    prepared = calibrated(torch.jit.script(ConvNet().eval()), {"": default_qconfig}, [(torch.randn(1, 3, 6, 6),)])
    before = str(prepared.graph) + str(prepared.conv.graph)
    insert_quant_dequant(prepared._c, "forward", False, False, "static")
    assert str(prepared.graph) + str(prepared.conv.graph) == before
    assert observer_children(prepared)


def test_inplace_true_shares_the_tensors_and_still_leaves_the_prepared_model_alone():
    # As the reference's pass: fresh class types either way; inplace=True only spares copying the tensors.
    torch.manual_seed(8)
    x = torch.randn(1, 3, 6, 6)
    prepared = calibrated(torch.jit.script(ConvNet().eval()), {"": default_qconfig}, [(x,)])
    before = str(prepared.graph) + str(prepared.conv.graph)
    reference = torch._C._jit_pass_insert_quant_dequant(prepared._c, "forward", True, False, QuantType.STATIC)

    ours = insert_quant_dequant(prepared._c, "forward", True, False, QuantType.STATIC)

    assert str(prepared.graph) + str(prepared.conv.graph) == before and observer_children(prepared)
    for converted in (ours, reference):
        assert converted.getattr("conv").getattr("weight") is prepared.conv._c.getattr("weight")
    assert torch.equal(ours.forward(x), reference.forward(x))


def test_bad_quant_type_is_rejected():
    prepared = calibrated(torch.jit.script(LinearNet().eval()), {"": default_qconfig}, [(torch.randn(2, 5),)])
    with pytest.raises(ValueError, match="quant_type"):
        insert_quant_dequant(prepared, "forward", False, False, "int4")


# --- dynamic -------------------------------------------------------------------


class TwoLinears(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 5)
        self.fc2 = nn.Linear(5, 5)

    def forward(self, x):
        return self.fc2(self.fc(x))


@TRACING
def test_dynamic_int8_runs_weight_observers_and_chooses_activation_qparams(tracing):
    torch.manual_seed(9)
    data = [(torch.rand(4, 5),)]
    ours, _ = check_against_reference(TwoLinears(), data, {"": default_dynamic_qconfig}, tracing=tracing, dynamic=True)
    FileCheck().check("aten::_choose_qparams_per_tensor").check("aten::quantize_per_tensor").check(
        "aten::dequantize"
    ).check("aten::linear").run(str(ours.graph))
    # weight qparams are the weight observer's, on weights no calibration touched
    for name in ("fc", "fc2"):
        observer = default_dynamic_qconfig.weight()
        observer(getattr(ours, name).weight)
        scale, zero_point = observer.calculate_qparams()
        attrs = dict(torch._C._jit_debug_module_iterators(getattr(ours, name)._c)["named_attributes"])
        assert [v for k, v in attrs.items() if "_scale_" in k] == [scale.item()]
        assert [v for k, v in attrs.items() if "_zero_point_" in k] == [zero_point.item()]


@TRACING
def test_dynamic_fp16_saturates_weights(tracing):
    torch.manual_seed(10)
    ours, _ = check_against_reference(
        LinearNet(), [(torch.rand(3, 5),)], {"": float16_dynamic_qconfig}, tracing=tracing, dynamic=True
    )
    FileCheck().check("aten::_saturate_weight_to_fp16").check("aten::linear").check_not("aten::dequantize").check_not(
        "aten::quantize"
    ).run(str(ours.graph))


class Bag(nn.Module):
    def __init__(self, padding_idx=None):
        super().__init__()
        self.bag = nn.EmbeddingBag(10, 12, mode="sum", include_last_offset=True, padding_idx=padding_idx)

    def forward(self, indices, offsets):
        return self.bag(indices, offsets)


def _bag_qconfig(op_name):
    # indices are observed too (argument order is not known at prepare time) and stay as they are
    activation = PlaceholderObserver.with_args(dtype=torch.float, custom_op_name=op_name)
    weight = PlaceholderObserver.with_args(dtype=torch.quint8, custom_op_name=op_name)
    return QConfig(activation=activation, weight=weight)


@pytest.mark.parametrize("op_name", ["embedding_bag_byte", "embedding_bag_4bit"])
def test_embedding_bag_weight_only(op_name):
    torch.manual_seed(11)
    data = [(torch.tensor([1, 2, 4, 5, 4, 3, 2, 9]), torch.tensor([0, 3, 6, 8]))]
    ours, _ = check_against_reference(Bag(), data, {"": _bag_qconfig(op_name)})
    FileCheck().check(f"quantized::{op_name}_prepack").check(f"quantized::{op_name}_rowwise_offsets").check_not(
        "aten::embedding_bag"
    ).run(str(ours.graph))


def test_embedding_bag_with_padding_idx_is_an_error_like_the_reference():
    data = [(torch.tensor([1, 2, 4, 5]), torch.tensor([0, 2, 4]))]
    prepared = calibrated(torch.jit.script(Bag(padding_idx=0).eval()), {"": _bag_qconfig("embedding_bag_byte")}, data)
    with pytest.raises(RuntimeError, match="Expected aten::embedding_bag padding_idx input to be None"):
        reference_insert_quant_dequant(prepared)
    with pytest.raises(RuntimeError, match="Expected aten::embedding_bag padding_idx input to be None"):
        insert_quant_dequant(prepared, "forward", False, False, QuantType.STATIC)


class ExportedFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.relu(x)

    @torch.jit.export
    def features(self, x):
        return self.conv(x)


def test_method_name_names_the_method_converted():
    # The method given is inlined and quantized; forward stays as it was.
    torch.manual_seed(0)
    model = torch.jit.script(ExportedFeatures().eval())
    prepared = insert_observers(model, "features", {"": default_qconfig}, False, QuantType.STATIC)
    prepared.features(torch.randn(1, 3, 6, 6))
    converted = insert_quant_dequant(prepared, "features", False, False, QuantType.STATIC)
    FileCheck().check_not("prim::CallMethod").check("aten::quantize_per_tensor").check("aten::conv2d").run(
        str(converted.features.graph)
    )
    FileCheck().check("aten::relu").check_not("quantize").run(str(converted.graph))

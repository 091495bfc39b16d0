"""quant_fusion, insert_prepack_unpack and fold_prepacking on their own, on IR text and small graphs."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.ao.quantization import default_qconfig
from torch.ao.quantization.quant_type import QuantType
from torch.testing import FileCheck

from helpers.quantized_reference import capture, quantization_op_counts, reference_pair
from passes import fold_prepacking, insert_prepack_unpack, quant_fusion
from passes.lower.insert_prepack_unpack import PREPACK_UNPACK
from passes.lower.quant_fusion import DYNAMIC_QUANT_FUSION, STATIC_QUANT_FUSION
from qgraph.pattern import _replacement_graph, compile_pattern


@pytest.mark.parametrize(
    "table", [STATIC_QUANT_FUSION, DYNAMIC_QUANT_FUSION, PREPACK_UNPACK], ids=["static", "dynamic", "prepack"]
)
def test_tables_parse_and_replacements_take_the_pattern_inputs(table):
    names = [entry.name for entry in table]
    assert len(names) == len(set(names))
    for entry in table:
        pattern = compile_pattern(entry.pattern)
        replacement = _replacement_graph(entry.replacement)
        assert len(list(replacement.inputs())) == len(pattern.inputs), entry.name
        if entry.source is not None:
            assert entry.source in pattern.names, entry.name


def test_scalar_relu_patterns_come_after_the_ops_they_match():
    order = [entry.name for entry in STATIC_QUANT_FUSION]
    for op in ("add", "mul"):
        for out in ("", "_out"):
            assert order.index(f"{op}_scalar{out}") < order.index(f"{op}_scalar{out}_relu")
    assert order.index("add_relu") < order.index("add")
    assert order.index("conv2d_relu") > order.index("conv2d")


ADD_SCALAR_RELU = """graph(%a_quant : Tensor):
    %b : int = prim::Constant[value=3]()
    %alpha : int = prim::Constant[value=1]()
    %a : Tensor = aten::dequantize(%a_quant)
    %r : Tensor = aten::add(%a, %b, %alpha)
    %scale : float = aten::q_scale(%a_quant)
    %zero_point : int = aten::q_zero_point(%a_quant)
    %dtype : int = prim::dtype(%a_quant)
    %r_quant : Tensor = aten::quantize_per_tensor(%r, %scale, %zero_point, %dtype)
    %relu : Tensor = aten::relu(%r_quant)
    return (%relu)"""


def test_add_scalar_then_relu_fuses_in_two_steps():
    graph = torch._C.parse_ir(ADD_SCALAR_RELU)
    assert quant_fusion(graph, QuantType.STATIC) == 2
    FileCheck().check("quantized::add_scalar_relu(%a_quant").check_not("aten::add").check_not("aten::relu").check_not(
        "aten::dequantize"
    ).run(str(graph))


@pytest.mark.parametrize("alpha", ["1.", "2"])
def test_add_with_alpha_not_int_one_is_left_alone(alpha):
    alpha_type = "float" if "." in alpha else "int"
    graph = torch._C.parse_ir(
        ADD_SCALAR_RELU.replace(
            "%alpha : int = prim::Constant[value=1]()", f"%alpha : {alpha_type} = prim::Constant[value={alpha}]()"
        )
    )
    assert quant_fusion(graph, QuantType.STATIC) == 0
    FileCheck().check("aten::add").run(str(graph))


def test_add_of_a_float_tensor_is_not_add_scalar():
    text = ADD_SCALAR_RELU.replace("graph(%a_quant : Tensor):", "graph(%a_quant : Tensor, %b : Tensor):").replace(
        "    %b : int = prim::Constant[value=3]()\n", ""
    )
    graph = torch._C.parse_ir(text)
    assert quant_fusion(graph, QuantType.STATIC) == 0


SIGMOID = """graph(%a_quant : Tensor):
    %a : Tensor = aten::dequantize(%a_quant)
    %r : Tensor = aten::sigmoid(%a)
    %scale : float = prim::Constant[value=SCALE]()
    %zero_point : int = prim::Constant[value=0]()
    %dtype : int = prim::Constant[value=13]()
    %r_quant : Tensor = aten::quantize_per_tensor(%r, %scale, %zero_point, %dtype)
    return (%r_quant)"""


def test_fixed_qparams_ops_need_exactly_the_fixed_qparams():
    fixed = torch._C.parse_ir(SIGMOID.replace("SCALE", "0.00390625"))
    assert quant_fusion(fixed, QuantType.STATIC) == 1
    FileCheck().check("aten::sigmoid(%a_quant)").check_not("aten::quantize_per_tensor").run(str(fixed))
    other = torch._C.parse_ir(SIGMOID.replace("SCALE", "0.01"))
    assert quant_fusion(other, QuantType.STATIC) == 0


DYNAMIC_LINEAR = """graph(%packed : __torch__.torch.classes.quantized.LinearPackedParamsBase, %a : Tensor):
    %reduce_range : bool = prim::Constant[value=1]()
    %dtype : int = prim::Constant[value=13]()
    %scale : float, %zero_point : int = aten::_choose_qparams_per_tensor(%a, %reduce_range)
    %a_quant : Tensor = aten::quantize_per_tensor(%a, %scale, %zero_point, %dtype)
    %a_dequant : Tensor = aten::dequantize(%a_quant)
    %w_quant : Tensor, %b : Tensor? = quantized::linear_unpack(%packed)
    %w : Tensor = aten::dequantize(%w_quant)
    %r : Tensor = aten::linear(%a_dequant, %w, %b)
    return (%r)"""


def test_dynamic_table_only_applies_to_dynamic_quantization():
    static = torch._C.parse_ir(DYNAMIC_LINEAR)
    assert quant_fusion(static, QuantType.STATIC) == 0
    dynamic = torch._C.parse_ir(DYNAMIC_LINEAR)
    assert quant_fusion(dynamic, QuantType.DYNAMIC) == 1
    FileCheck().check("quantized::linear_dynamic(%a, %packed, %2)").check_not(
        "aten::_choose_qparams_per_tensor"
    ).check_not("aten::linear").run(str(dynamic))


def test_quant_type_is_checked():
    graph = torch._C.parse_ir(SIGMOID.replace("SCALE", "0.01"))
    with pytest.raises(TypeError, match="QuantType"):
        quant_fusion(graph, 1)
    with pytest.raises(ValueError, match="STATIC and QuantType.DYNAMIC"):
        quant_fusion(graph, QuantType.QAT)
    with pytest.raises(TypeError, match="torch._C.Graph"):
        quant_fusion("graph", QuantType.STATIC)


def test_prepack_unpack_keeps_the_computation():
    graph = torch._C.parse_ir(
        """graph(%x : Tensor, %w_q : Tensor, %b : Tensor):
        %w : Tensor = aten::dequantize(%w_q)
        %y : Tensor = aten::linear(%x, %w, %b)
        return (%y)"""
    )
    assert insert_prepack_unpack(graph) == 1
    FileCheck().check("quantized::linear_prepack(%w_q, %b)").check("quantized::linear_unpack").check(
        "aten::dequantize"
    ).check("aten::linear").run(str(graph))
    w_q = torch.quantize_per_tensor(torch.randn(3, 4), 0.05, 0, torch.qint8)
    x, b = torch.randn(2, 4), torch.randn(3)
    expected = torch.nn.functional.linear(x, w_q.dequantize(), b)
    run = torch._C._create_function_from_graph("prepack_unpack_linear", graph)
    assert torch.equal(run(x, w_q, b), expected)


class ConvLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean([2, 3]))


@pytest.mark.parametrize("tracing", [False, True], ids=["script", "trace"])
def test_fusion_matches_the_reference_fusion_graph(tracing):
    torch.manual_seed(0)
    example = (torch.randn(1, 3, 6, 6),)
    qdq, _ = reference_pair(capture(ConvLinear(), example, tracing), {"": default_qconfig}, [example])
    ours = qdq._c.forward.graph.copy()
    insert_prepack_unpack(ours)
    quant_fusion(ours, QuantType.STATIC)
    reference = qdq._c.forward.graph.copy()
    torch._C._jit_pass_insert_prepack_unpack(reference)
    torch._C._jit_pass_quant_fusion(reference)
    assert quantization_op_counts(ours) == quantization_op_counts(reference)
    FileCheck().check("quantized::conv2d_prepack").check("quantized::conv2d_relu(").check(
        "quantized::linear_prepack"
    ).check("quantized::linear(").run(str(ours))


def test_fold_prepacking_stores_packed_params_and_leaves_runtime_weights():
    torch.manual_seed(0)
    example = (torch.randn(1, 3, 6, 6),)
    qdq, _ = reference_pair(capture(ConvLinear(), example, False), {"": default_qconfig}, [example])
    graph = qdq._c.forward.graph
    insert_prepack_unpack(graph)
    quant_fusion(graph, QuantType.STATIC)
    frozen = torch._C._freeze_module(qdq._c)
    FileCheck().check("quantized::conv2d_prepack").run(str(frozen.forward.graph))
    assert fold_prepacking(frozen) is frozen
    text = str(frozen.forward.graph)
    FileCheck().check_not("_prepack").check_count('prim::GetAttr[name="_packed_params_', 2, exactly=True).run(text)
    assert frozen.hasattr("_packed_params_0") and frozen.hasattr("_packed_params_1")

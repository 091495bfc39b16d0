"""replicate_quantize: a quantize of an ``if`` result moves into every branch.

Tracing does not capture ``if``, so every model here is scripted.
"""

import pytest
import torch
from torch.testing import FileCheck

from passes.replicate_quantize import replicate_quantize
from qgraph.ir import clone_module


def fresh_copy(scripted):
    """A clone with its own class types, never run, so its graph can be edited and then executed."""
    return torch.jit._recursive.wrap_cpp_module(clone_module(scripted._c))


def kinds(block):
    return [n.kind() for n in block.nodes()]


class QuantizedBranches(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = 0.05
        self.zero_point = 64

    def forward(self, x, take_relu: bool):
        if take_relu:
            y = torch.relu(x)
        else:
            y = x * 2.0
        y_q = torch.quantize_per_tensor(y, self.scale, self.zero_point, torch.quint8)
        return torch.dequantize(y_q)


def test_quantize_moves_into_each_branch():
    torch.manual_seed(0)
    scripted = torch.jit.script(QuantizedBranches())
    model = fresh_copy(scripted)
    assert replicate_quantize(model.graph) == 1
    text = str(model.graph)
    FileCheck().check("prim::If").check("block0").check("aten::relu").check_next(
        "aten::quantize_per_tensor"
    ).check_next("->").check("block1").check("aten::mul").check_next("aten::quantize_per_tensor").check_next("->").run(
        text
    )
    FileCheck().check_count("aten::quantize_per_tensor", 2, exactly=True).run(text)
    if_node = model.graph.findNode("prim::If")
    assert [u.user.kind() for u in if_node.output().uses()] == ["aten::dequantize"]
    for block in if_node.blocks():
        assert next(iter(block.outputs())).node().kind() == "aten::quantize_per_tensor"
    x = torch.randn(2, 5)
    for take_relu in (True, False):
        assert torch.equal(model(x, take_relu), scripted(x, take_relu))


def test_parameters_read_after_the_if_move_before_it():
    scripted = torch.jit.script(QuantizedBranches())
    # Scripting reads self.scale and self.zero_point after the if.
    FileCheck().check("prim::If").check('prim::GetAttr[name="scale"]').run(str(scripted.graph))
    model = fresh_copy(scripted)
    replicate_quantize(model.graph)
    FileCheck().check('prim::GetAttr[name="scale"]').check('prim::GetAttr[name="zero_point"]').check(
        "prim::If"
    ).check_not("prim::GetAttr").run(str(model.graph))
    model.graph.lint()


def test_branch_quantize_keeps_source_range_and_block_result_name():
    model = fresh_copy(torch.jit.script(QuantizedBranches()))
    quantize = model.graph.findNode("aten::quantize_per_tensor")
    source = quantize.sourceRange()
    if_node = model.graph.findNode("prim::If")
    returned = [next(iter(b.outputs())).debugName() for b in if_node.blocks()]
    replicate_quantize(model.graph)
    for block, name in zip(if_node.blocks(), returned):
        branch_quantize = next(iter(block.outputs())).node()
        assert branch_quantize.sourceRange() == source
        assert next(iter(block.outputs())).debugName() == name


class PerChannelBranches(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scales = torch.tensor([0.1, 0.02, 0.05])
        self.zero_points = torch.tensor([0, 0, 0])

    def forward(self, x, take_relu: bool):
        if take_relu:
            y = torch.relu(x)
        else:
            y = x - 1.0
        y_q = torch.quantize_per_channel(y, self.scales, self.zero_points, 1, torch.qint8)
        return torch.dequantize(y_q)


def test_per_channel_quantize_moves_too():
    torch.manual_seed(0)
    scripted = torch.jit.script(PerChannelBranches())
    model = fresh_copy(scripted)
    assert replicate_quantize(model.graph) == 1
    FileCheck().check("block0").check("aten::relu").check_next("aten::quantize_per_channel").check("block1").check(
        "aten::sub"
    ).check_next("aten::quantize_per_channel").run(str(model.graph))
    x = torch.randn(4, 3)
    for take_relu in (True, False):
        assert torch.equal(model(x, take_relu), scripted(x, take_relu))


class FloatReaderToo(torch.nn.Module):
    def forward(self, x, take_relu: bool):
        if take_relu:
            y = torch.relu(x)
        else:
            y = x * 2.0
        y_q = torch.quantize_per_tensor(y, 0.1, 0, torch.quint8)
        return torch.dequantize(y_q) + y


def test_result_also_read_in_float_stays_put():
    model = fresh_copy(torch.jit.script(FloatReaderToo()))
    before = str(model.graph)
    assert replicate_quantize(model.graph) == 0
    assert str(model.graph) == before


class ScaleFromResult(torch.nn.Module):
    def forward(self, x, take_relu: bool):
        if take_relu:
            y = torch.relu(x)
        else:
            y = x * 2.0
        scale = float(y.abs().max()) / 127.0 + 1e-6
        return torch.dequantize(torch.quantize_per_tensor(y, scale, 0, torch.qint8))


def test_parameters_computed_from_the_result_keep_the_quantize_outside():
    scripted = torch.jit.script(ScaleFromResult())
    model = fresh_copy(scripted)
    before = str(model.graph)
    assert replicate_quantize(model.graph) == 0
    assert str(model.graph) == before


def quantize_plain(x):
    return torch.dequantize(torch.quantize_per_tensor(torch.relu(x), 0.1, 0, torch.quint8))


def test_quantize_of_a_plain_value_is_untouched():
    graph = torch.jit.script(quantize_plain).graph
    before = str(graph)
    assert replicate_quantize(graph) == 0
    assert str(graph) == before


class TwoResults(torch.nn.Module):
    def forward(self, x, take_relu: bool):
        if take_relu:
            a, b = torch.relu(x), x + 1.0
        else:
            a, b = x * 2.0, x - 1.0
        a_q = torch.quantize_per_tensor(a, 0.1, 10, torch.quint8)
        return torch.dequantize(a_q), b


def test_if_with_several_results_moves_only_the_quantized_one():
    torch.manual_seed(0)
    scripted = torch.jit.script(TwoResults())
    model = fresh_copy(scripted)
    assert replicate_quantize(model.graph) == 1
    if_node = model.graph.findNode("prim::If")
    for block in if_node.blocks():
        first, second = block.outputs()
        assert first.node().kind() == "aten::quantize_per_tensor"
        assert second.node().kind() != "aten::quantize_per_tensor"
    x = torch.randn(3, 3)
    for take_relu in (True, False):
        for got, expected in zip(model(x, take_relu), scripted(x, take_relu)):
            assert torch.equal(got, expected)


class NestedIf(torch.nn.Module):
    def forward(self, x, outer: bool, inner: bool):
        if outer:
            if inner:
                y = torch.relu(x)
            else:
                y = torch.sigmoid(x)
            z = torch.dequantize(torch.quantize_per_tensor(y, 0.01, 0, torch.quint8))
        else:
            z = x
        return z


def test_if_nested_in_a_branch_is_handled_in_place():
    torch.manual_seed(0)
    scripted = torch.jit.script(NestedIf())
    model = fresh_copy(scripted)
    assert replicate_quantize(model.graph) == 1
    outer = model.graph.findNode("prim::If")
    inner = next(n for n in next(iter(outer.blocks())).nodes() if n.kind() == "prim::If")
    for block in inner.blocks():
        assert kinds(block)[-1] == "aten::quantize_per_tensor"
    model.graph.lint()
    x = torch.randn(2, 4)
    for flags in [(True, True), (True, False), (False, True)]:
        assert torch.equal(model(x, *flags), scripted(x, *flags))


def test_rejects_a_module():
    with pytest.raises(TypeError, match="torch._C.Graph"):
        replicate_quantize(torch.jit.script(QuantizedBranches()))

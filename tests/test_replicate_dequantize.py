"""replicate_dequantize: one aten::dequantize per use, placed in the user's block."""

import pytest
import torch
from torch.testing import FileCheck

from helpers.graph_text import normalized_graph_text
from passes.replicate_dequantize import replicate_dequantize
from qgraph.ir import clone_module


def quantized(shape, scale=0.25, zero_point=3):
    return torch.quantize_per_tensor(torch.randn(shape), scale, zero_point, torch.quint8)


def rewritten_and_reference(scripted):
    """(our rewritten module, the reference's rewritten module), both fresh clones never run before."""
    ours = torch.jit._recursive.wrap_cpp_module(clone_module(scripted._c))
    theirs = torch.jit._recursive.wrap_cpp_module(clone_module(scripted._c))
    replicate_dequantize(ours.graph)
    torch._C._jit_pass_replicate_dequantize(theirs.graph)
    return ours, theirs


class ConvPlusSkip(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 2, 1)

    def forward(self, x_q):
        x = torch.dequantize(x_q)
        return self.conv(x) - x


def test_each_use_gets_its_own_dequantize():
    torch.manual_seed(0)
    model = ConvPlusSkip().eval()
    x_q = quantized((1, 2, 4, 4))
    scripted = torch.jit.script(model)
    FileCheck().check_count("aten::dequantize", 1, exactly=True).run(str(scripted.graph))
    ours, theirs = rewritten_and_reference(scripted)
    FileCheck().check_count("aten::dequantize", 2, exactly=True).run(str(ours.graph))
    FileCheck().check("aten::dequantize").check_next("prim::CallMethod").check("aten::dequantize").check_next(
        "aten::sub"
    ).run(str(ours.graph))
    assert normalized_graph_text(ours.graph) == normalized_graph_text(theirs.graph)
    assert torch.equal(ours(x_q), model(x_q))


class BranchUses(torch.nn.Module):
    def __init__(self, take_conv: bool):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 2, 1)
        self.take_conv = take_conv

    def forward(self, x_q):
        x = torch.dequantize(x_q)
        if self.take_conv:
            y = self.conv(x)
        else:
            y = x * 2.0
        return y


@pytest.mark.parametrize("take_conv", [True, False])
def test_uses_inside_branches_get_the_dequantize_inside_the_branch(take_conv):
    torch.manual_seed(0)
    model = BranchUses(take_conv).eval()
    x_q = quantized((1, 2, 3, 3))
    ours, theirs = rewritten_and_reference(torch.jit.script(model))
    text = str(ours.graph)
    FileCheck().check("prim::If").check("block0").check("aten::dequantize").check_next("prim::CallMethod").check(
        "block1"
    ).check("aten::dequantize").check_next("aten::mul").run(text)
    if_node = ours.graph.findNode("prim::If")
    assert [n.kind() for n in ours.graph.nodes()].count("aten::dequantize") == 0
    for block in if_node.blocks():
        assert [n.kind() for n in block.nodes()].count("aten::dequantize") == 1
    assert normalized_graph_text(ours.graph) == normalized_graph_text(theirs.graph)
    assert torch.equal(ours(x_q), model(x_q))


def square(x_q):
    x = torch.dequantize(x_q)
    return x * x


def test_one_node_reading_the_value_twice_gets_two_dequantizes():
    torch.manual_seed(0)
    ours = torch.jit.script(square).graph.copy()
    theirs = ours.copy()
    assert replicate_dequantize(ours) == 1
    torch._C._jit_pass_replicate_dequantize(theirs)
    mul = ours.findNode("aten::mul")
    first, second = (v.node() for v in mul.inputs())
    assert first.kind() == second.kind() == "aten::dequantize"
    assert first is not second
    FileCheck().check_count("aten::dequantize", 2, exactly=True).check_next("aten::mul").run(str(ours))
    assert normalized_graph_text(ours) == normalized_graph_text(theirs)
    x_q = quantized((3, 5))
    run = torch._C._create_function_from_graph("square_replicated", ours)
    assert torch.equal(run(x_q), square(x_q))


def dequantize_once(x_q):
    x = torch.dequantize(x_q)
    return torch.relu(x)


def test_single_use_is_left_alone():
    graph = torch.jit.script(dequantize_once).graph
    before = str(graph)
    assert replicate_dequantize(graph) == 0
    assert str(graph) == before


def returned_and_used(x_q):
    x = torch.dequantize(x_q)
    return x, torch.sigmoid(x)


def test_returned_value_gets_a_dequantize_before_the_return():
    torch.manual_seed(0)
    ours = torch.jit.script(returned_and_used).graph.copy()
    theirs = ours.copy()
    replicate_dequantize(ours)
    torch._C._jit_pass_replicate_dequantize(theirs)
    FileCheck().check("aten::dequantize").check_next("aten::sigmoid").check("aten::dequantize").check_next(
        "prim::TupleConstruct"
    ).run(str(ours))
    assert normalized_graph_text(ours) == normalized_graph_text(theirs)
    x_q = quantized((4,))
    run = torch._C._create_function_from_graph("returned_replicated", ours)
    for got, expected in zip(run(x_q), returned_and_used(x_q)):
        assert torch.equal(got, expected)


def loop_use(x_q, n: int):
    x = torch.dequantize(x_q)
    total = torch.zeros_like(x)
    for _ in range(n):
        total = total + x
    return total * x


def test_use_inside_a_loop_body_gets_the_dequantize_inside_the_body():
    torch.manual_seed(0)
    ours = torch.jit.script(loop_use).graph.copy()
    theirs = ours.copy()
    replicate_dequantize(ours)
    torch._C._jit_pass_replicate_dequantize(theirs)
    loop = ours.findNode("prim::Loop")
    body = next(iter(loop.blocks()))
    FileCheck().check("prim::Loop").check("aten::dequantize").check_next("aten::add").run(str(ours))
    assert [n.kind() for n in body.nodes()][:2] == ["aten::dequantize", "aten::add"]
    assert normalized_graph_text(ours) == normalized_graph_text(theirs)
    x_q = quantized((2, 2))
    run = torch._C._create_function_from_graph("loop_replicated", ours)
    assert torch.equal(run(x_q, 3), loop_use(x_q, 3))


class TracedDoubleUse(torch.nn.Module):
    def forward(self, x_q):
        x = torch.dequantize(x_q)
        return torch.cat([torch.relu(x), x + 1.0], dim=1)


def test_traced_graph():
    torch.manual_seed(0)
    x_q = quantized((2, 3))
    model = TracedDoubleUse()
    traced = torch.jit.trace(model, (x_q,))
    ours, theirs = rewritten_and_reference(traced)
    FileCheck().check_count("aten::dequantize", 2, exactly=True).run(str(ours.graph))
    FileCheck().check("aten::dequantize").check_next("aten::relu").check("aten::dequantize").check_next(
        "aten::add"
    ).run(str(ours.graph))
    assert normalized_graph_text(ours.graph) == normalized_graph_text(theirs.graph)
    assert torch.equal(ours(x_q), model(x_q))


def test_copies_keep_the_source_range_of_the_original():
    graph = torch.jit.script(square).graph.copy()
    original = graph.findNode("aten::dequantize").sourceRange()
    replicate_dequantize(graph)
    copies = [n for n in graph.nodes() if n.kind() == "aten::dequantize"]
    assert copies and all(n.sourceRange() == original for n in copies)


def test_rejects_a_module():
    with pytest.raises(TypeError, match="torch._C.Graph"):
        replicate_dequantize(torch.jit.script(ConvPlusSkip()))

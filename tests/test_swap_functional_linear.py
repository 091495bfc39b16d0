import pytest
import torch
from torch.testing import FileCheck

from helpers.graph_structure import dataflow_signature
from helpers.models import run_graph
from passes import swap_functional_linear
from qgraph.ir import as_python, clone_module


def swapped_and_reference(module):
    """Copies of ``module``'s forward graph: one through our pass, one through the reference's."""
    ours, reference = module.graph.copy(), module.graph.copy()
    count = swap_functional_linear(ours)
    torch._C._jit_pass_swap_functional_linear(reference)
    return count, ours, reference


def linear(x, weight, bias):
    return torch.nn.functional.linear(x, weight, bias)


class DequantizedLinear(torch.nn.Module):
    def forward(self, x_q, weight_q, bias):
        x = torch.dequantize(x_q)
        weight = torch.dequantize(weight_q)
        y = linear(x, weight, bias)
        return torch.quantize_per_tensor(y, 0.25, 2, torch.quint8)


def test_call_of_function_named_linear_becomes_aten_linear():
    torch.manual_seed(0)
    model = torch.jit.script(DequantizedLinear())
    FileCheck().check("prim::CallFunction").run(str(model.graph))
    count, graph, reference = swapped_and_reference(model)

    assert count == 1
    FileCheck().check("aten::dequantize").check("aten::linear").check("aten::quantize_per_tensor").check_not(
        "prim::CallFunction"
    ).run(str(graph))
    assert dataflow_signature(graph) == dataflow_signature(reference)
    x_q = torch.quantize_per_tensor(torch.rand(6, 5), 0.5, 1, torch.quint8)
    weight_q = torch.quantize_per_tensor(torch.rand(3, 5), 0.5, 1, torch.qint8)
    bias = torch.rand(3)
    # The called function is F.linear itself, so the result is the same op.
    assert torch.equal(run_graph(graph, model._c, x_q, weight_q, bias), model(x_q, weight_q, bias))


def test_linear_keeps_the_call_source_range():
    model = torch.jit.script(DequantizedLinear())
    graph = model.graph.copy()
    call_range = next(n for n in graph.nodes() if n.kind() == "prim::CallFunction").sourceRange()

    swap_functional_linear(graph)
    assert next(n for n in graph.nodes() if n.kind() == "aten::linear").sourceRange() == call_range


def my_linear(x, weight, bias):
    return torch.nn.functional.linear(x, weight, bias)


def bilinear(x, weight, bias):
    return torch.nn.functional.linear(x, weight, bias)


class OtherNames(torch.nn.Module):
    def forward(self, x, weight, bias):
        return my_linear(x, weight, bias) + bilinear(x, weight, bias)


def test_functions_whose_name_only_ends_in_linear_stay_calls():
    model = torch.jit.script(OtherNames())
    count, graph, reference = swapped_and_reference(model)

    assert count == 0
    FileCheck().check_count("prim::CallFunction", 2, exactly=True).check_not("aten::linear").run(str(graph))
    assert dataflow_signature(graph) == dataflow_signature(reference)


class ScaleOps:
    @staticmethod
    def linear(x, weight, bias):
        return x * 2.0


class ScaleNamedLinear(torch.nn.Module):
    def forward(self, x, weight, bias):
        return ScaleOps.linear(x, weight, bias)


def test_any_three_argument_function_named_linear_is_swapped():
    # The reference judges by name alone; its body is never looked at.
    model = torch.jit.script(ScaleNamedLinear())
    count, graph, reference = swapped_and_reference(model)

    assert count == 1
    FileCheck().check("aten::linear").check_not("prim::CallFunction").run(str(graph))
    assert dataflow_signature(graph) == dataflow_signature(reference)


class LinearInBranch(torch.nn.Module):
    def forward(self, x, weight, bias, enabled: bool):
        if enabled:
            x = linear(x, weight, bias)
        return x


def test_calls_inside_if_branches_are_swapped_in_place():
    torch.manual_seed(0)
    model = torch.jit.script(LinearInBranch())
    count, graph, reference = swapped_and_reference(model)

    assert count == 1
    FileCheck().check("prim::If").check("aten::linear").check_not("prim::CallFunction").run(str(graph))
    # The reference places the linear after its last input, here the graph's
    # inputs, which hoists it out of the branch so that it runs even when the
    # branch is not taken; ours stays where the call was.
    assert "aten::linear" not in [n.kind() for n in graph.nodes()]
    assert "aten::linear" in [n.kind() for n in reference.nodes()]
    x, weight, bias = torch.randn(2, 4), torch.randn(4, 4), torch.randn(4)
    for enabled in (True, False):
        assert torch.equal(run_graph(graph, model._c, x, weight, bias, enabled), model(x, weight, bias, enabled))


class FunctionalLinearModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(4, 3))
        self.bias = torch.nn.Parameter(torch.randn(4))

    def forward(self, x):
        return linear(x, self.weight, self.bias)


def test_traced_function_call_is_already_aten_linear():
    torch.manual_seed(0)
    x = torch.randn(2, 3)
    model = torch.jit.trace(FunctionalLinearModel(), x)
    graph = model.graph.copy()
    before = str(graph)

    assert swap_functional_linear(graph) == 0
    assert str(graph) == before
    FileCheck().check("aten::linear").check_not("prim::CallFunction").run(before)


class TwoFunctionalLinears(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.first = FunctionalLinearModel()
        self.second = FunctionalLinearModel()
        self.other = DequantizedLinear()

    def forward(self, x):
        return self.second(self.first(x).narrow(1, 0, 3))

    @torch.jit.export
    def also(self, x_q, weight_q, bias):
        return self.other(x_q, weight_q, bias)


@pytest.mark.parametrize("cpp", [False, True], ids=["ScriptModule", "torch._C.ScriptModule"])
def test_module_overload_swaps_every_method_of_the_tree_like_the_reference(cpp):
    torch.manual_seed(0)
    # Clones: the pass rewrites class types, which scripting caches for the next instance.
    ours, reference = (as_python(clone_module(torch.jit.script(TwoFunctionalLinears())._c)) for _ in range(2))
    x = torch.randn(2, 3)
    expected = ours(x)

    # The two FunctionalLinearModel instances share one graph: one call there, one in DequantizedLinear.
    assert swap_functional_linear(ours._c if cpp else ours) == 2
    torch._C._jit_pass_swap_functional_linear(reference._c)

    for module in ("first", "other"):
        ours_graph, reference_graph = getattr(ours, module).graph, getattr(reference, module).graph
        FileCheck().check("aten::linear").check_not("prim::CallFunction").run(str(ours_graph))
        assert [n.kind() for n in ours_graph.nodes()] == [n.kind() for n in reference_graph.nodes()]
    assert torch.equal(ours(x), expected)


def test_rejects_what_is_neither_a_graph_nor_a_script_module():
    with pytest.raises(TypeError, match="torch._C.Graph or a script module"):
        swap_functional_linear(DequantizedLinear())

import pytest
import torch
from torch.testing import FileCheck

from helpers.graph_structure import dataflow_signature
from helpers.models import run_graph
from passes import fuse_linear


def fused_and_reference(module):
    """Copies of ``module``'s forward graph: one through fuse_linear, one through the reference pass."""
    ours, reference = module.graph.copy(), module.graph.copy()
    count = fuse_linear(ours)
    torch._C._jit_pass_fuse_linear(reference)
    return count, ours, reference


class AddmmLinear(torch.nn.Module):
    __constants__ = ["beta", "alpha"]  # so that scripting makes them graph constants

    def __init__(self, beta=1, alpha=1):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(4, 3))
        self.bias = torch.nn.Parameter(torch.randn(4))
        self.beta, self.alpha = beta, alpha

    def forward(self, x):
        return torch.addmm(self.bias, x, self.weight.t(), beta=self.beta, alpha=self.alpha)


def test_addmm_with_transposed_weight_becomes_linear():
    torch.manual_seed(0)
    model = torch.jit.script(AddmmLinear())
    count, graph, reference = fused_and_reference(model)

    assert count == 1
    FileCheck().check("aten::linear").check_not("aten::addmm").check_not("aten::t(").run(str(graph))
    assert dataflow_signature(graph) == dataflow_signature(reference)
    x = torch.randn(5, 3)
    # aten::linear on a 2-D input is computed by the same addmm call.
    assert torch.equal(run_graph(graph, model._c, x), model(x))


@pytest.mark.parametrize("beta, alpha", [(2, 1), (1, 2), (1.0, 1)])
def test_addmm_with_beta_or_alpha_not_integer_one_stays(beta, alpha):
    torch.manual_seed(0)
    model = torch.jit.script(AddmmLinear(beta, alpha))
    count, graph, reference = fused_and_reference(model)

    assert count == 0
    FileCheck().check("aten::t(").check("aten::addmm").check_not("aten::linear").run(str(graph))
    assert dataflow_signature(graph) == dataflow_signature(reference)


class MatmulThenInplaceBias(torch.nn.Module):
    def __init__(self, weight, bias):
        super().__init__()
        self.weight = weight
        self.bias = bias

    def forward(self, x):
        out = torch.matmul(x, self.weight.t())
        if self.bias is not None:
            out.add_(self.bias)
        return out


@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("input_shape", [(3,), (6, 3), (2, 6, 3)], ids=["1d", "2d", "3d"])
def test_traced_matmul_with_transposed_weight_becomes_linear(input_shape, has_bias):
    torch.manual_seed(0)
    bias = torch.randn(5) if has_bias else None
    x = torch.randn(input_shape)
    model = torch.jit.trace(MatmulThenInplaceBias(torch.randn(5, 3), bias), x)
    matmul_range = next(n for n in model.graph.nodes() if n.kind() == "aten::matmul").sourceRange()
    count, graph, reference = fused_and_reference(model)

    assert count == 1
    FileCheck().check("aten::linear").check_not("aten::matmul").check_not("aten::add_").check_not("aten::t(").run(
        str(graph)
    )
    linear = next(n for n in graph.nodes() if n.kind() == "aten::linear")
    assert linear.sourceRange() == matmul_range
    assert dataflow_signature(graph) == dataflow_signature(reference)
    # linear may take a different BLAS path (addmm with the bias folded in
    # for 2-D/3-D inputs) than matmul followed by add_, so the last bits can
    # differ.
    torch.testing.assert_close(run_graph(graph, model._c, x), model(x))


class MatmulOutOfPlaceBias(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(4, 3))
        self.bias = torch.nn.Parameter(torch.randn(4))

    def forward(self, x):
        return x @ self.weight.t() + self.bias


def test_scripted_out_of_place_bias_add_stays_separate_by_default():
    torch.manual_seed(0)
    model = torch.jit.script(MatmulOutOfPlaceBias())
    count, graph, reference = fused_and_reference(model)

    # The reference folds only add_, so a quantized model keeps its separate add.
    assert count == 1
    FileCheck().check("prim::Constant()").check_next("aten::linear").check("aten::add(").run(str(graph))
    assert dataflow_signature(graph) == dataflow_signature(reference)
    x = torch.randn(2, 3)
    # linear without bias on a 2-D input is exactly matmul with the transposed weight.
    assert torch.equal(run_graph(graph, model._c, x), model(x))


@pytest.mark.parametrize("capture", ["script", "trace"])
def test_fuse_add_option_folds_out_of_place_bias_add(capture):
    torch.manual_seed(0)
    x = torch.randn(2, 3)
    eager = MatmulOutOfPlaceBias()
    model = torch.jit.script(eager) if capture == "script" else torch.jit.trace(eager, x)
    graph = model.graph.copy()

    assert fuse_linear(graph, fuse_add=True) == 1
    FileCheck().check("aten::linear").check_not("aten::add").check_not("aten::matmul").run(str(graph))
    # The bias is added inside addmm instead of by a separate add.
    torch.testing.assert_close(run_graph(graph, model._c, x), model(x))


class MatmulPlusBroadcastingBias(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(4, 3))
        self.bias = torch.nn.Parameter(torch.randn(2, 5, 4))

    def forward(self, x):
        return x @ self.weight.t() + self.bias


def test_fuse_add_option_keeps_an_add_that_broadcasts_the_result_up():
    torch.manual_seed(0)
    x = torch.randn(5, 3)
    model = torch.jit.trace(MatmulPlusBroadcastingBias(), x)
    graph = model.graph.copy()

    # The add turns the (5, 4) product into (2, 5, 4); aten::linear could not.
    assert fuse_linear(graph, fuse_add=True) == 1
    FileCheck().check("prim::Constant()").check_next("aten::linear").check("aten::add(").run(str(graph))
    assert torch.equal(run_graph(graph, model._c, x), model(x))


class MatmulResultReadAfterInplaceAdd(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(4, 3))
        self.bias = torch.nn.Parameter(torch.randn(4))

    def forward(self, x):
        out = torch.matmul(x, self.weight.t())
        out.add_(self.bias)
        return out


def test_inplace_bias_add_stays_when_matmul_result_is_read_again():
    torch.manual_seed(0)
    model = torch.jit.script(MatmulResultReadAfterInplaceAdd())
    count, graph, reference = fused_and_reference(model)

    assert count == 1
    FileCheck().check("aten::linear").check("aten::add_").check_not("aten::matmul").run(str(graph))
    assert dataflow_signature(graph) == dataflow_signature(reference)
    x = torch.randn(2, 3)
    assert torch.equal(run_graph(graph, model._c, x), model(x))


class MatmulPlusScalar(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(4, 3))

    def forward(self, x):
        return torch.matmul(x, self.weight.t()).add_(1.5)


def test_inplace_scalar_add_is_not_taken_as_bias():
    torch.manual_seed(0)
    model = torch.jit.script(MatmulPlusScalar())
    graph = model.graph.copy()

    # The reference would pass the float 1.5 as the linear's bias, a graph
    # that fails when run; the scalar add stays after a bias-less linear.
    assert fuse_linear(graph) == 1
    FileCheck().check("prim::Constant()").check_next("aten::linear").check("aten::add_").run(str(graph))
    x = torch.randn(2, 3)
    assert torch.equal(run_graph(graph, model._c, x), model(x))


class MatmulPlainWeight(torch.nn.Module):
    def __init__(self, weight):
        super().__init__()
        self.weight = weight

    def forward(self, x):
        return torch.matmul(x, self.weight)


@pytest.mark.parametrize(
    "input_shape, weight_shape", [((5, 6, 5), (5, 5, 7)), ((2, 3), (3, 4))], ids=["3d_weight", "2d_weight"]
)
def test_matmul_without_transposed_weight_stays(input_shape, weight_shape):
    torch.manual_seed(0)
    x = torch.randn(input_shape)
    model = torch.jit.trace(MatmulPlainWeight(torch.randn(weight_shape)), x)
    count, graph, reference = fused_and_reference(model)

    assert count == 0
    FileCheck().check("aten::matmul").check_not("aten::linear").run(str(graph))
    assert dataflow_signature(graph) == dataflow_signature(reference)


class TransposeUsedTwice(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(4, 3))

    def forward(self, x):
        weight_t = self.weight.t()
        return torch.matmul(x, weight_t), weight_t.sum()


def test_shared_transpose_stays_and_linear_reads_its_transpose():
    torch.manual_seed(0)
    model = torch.jit.script(TransposeUsedTwice())
    count, graph, reference = fused_and_reference(model)

    assert count == 1
    FileCheck().check("aten::t(").check("aten::t(").check("aten::linear").check("aten::sum").run(str(graph))
    assert dataflow_signature(graph) == dataflow_signature(reference)
    x = torch.randn(2, 3)
    expected = model(x)
    got = run_graph(graph, model._c, x)
    assert all(torch.equal(g, e) for g, e in zip(got, expected))


class LinearOfDoubleTranspose(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(4, 3))
        self.bias = torch.nn.Parameter(torch.randn(4))

    def forward(self, x):
        return torch.nn.functional.linear(x, self.weight.t().t(), self.bias)


def test_double_transposed_linear_weight_is_simplified():
    torch.manual_seed(0)
    model = torch.jit.script(LinearOfDoubleTranspose())
    count, graph, reference = fused_and_reference(model)

    assert count == 1
    FileCheck().check_not("aten::t(").check("aten::linear").run(str(graph))
    assert dataflow_signature(graph) == dataflow_signature(reference)
    x = torch.randn(2, 3)
    assert torch.equal(run_graph(graph, model._c, x), model(x))


class AddmmInBranch(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(4, 3))
        self.bias = torch.nn.Parameter(torch.randn(4))

    def forward(self, x, use_affine: bool):
        if use_affine:
            y = torch.addmm(self.bias, x, self.weight.t())
        else:
            y = torch.matmul(x, self.weight.t())
        return y


def test_rewrites_inside_if_branches():
    torch.manual_seed(0)
    model = torch.jit.script(AddmmInBranch())
    count, graph, reference = fused_and_reference(model)

    assert count == 2
    FileCheck().check("prim::If").check("aten::linear").check("aten::linear").check_not("aten::matmul").run(str(graph))
    assert dataflow_signature(graph) == dataflow_signature(reference)
    x = torch.randn(2, 3)
    for flag in (True, False):
        assert torch.equal(run_graph(graph, model._c, x, flag), model(x, flag))


def linear(x, weight, bias):
    return torch.nn.functional.linear(x, weight, bias)


class CallsLinearFunction(torch.nn.Module):
    def forward(self, x, weight, bias):
        return linear(x, weight, bias)


def test_calls_of_function_named_linear_are_swapped_too():
    torch.manual_seed(0)
    model = torch.jit.script(CallsLinearFunction())
    count, graph, reference = fused_and_reference(model)

    assert count == 1
    FileCheck().check("aten::linear").check_not("prim::CallFunction").run(str(graph))
    assert dataflow_signature(graph) == dataflow_signature(reference)


@pytest.mark.parametrize("capture", ["script", "trace"])
def test_nn_linear_is_already_fused(capture):
    torch.manual_seed(0)
    x = torch.randn(2, 3)
    layer = torch.nn.Linear(3, 4)
    model = torch.jit.script(layer) if capture == "script" else torch.jit.trace(layer, x)
    graph = model.graph.copy()
    before = str(graph)

    assert fuse_linear(graph) == 0
    assert str(graph) == before


def test_rejects_a_module():
    with pytest.raises(TypeError, match="torch._C.Graph"):
        fuse_linear(torch.jit.script(torch.nn.Linear(3, 4)))

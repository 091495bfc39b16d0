"""passes.fold_conv_bn: Conv{1,2,3}d -> BatchNorm{1,2,3}d submodule calls fold into the conv."""

import sys

import pytest
import torch
import torch.nn as nn
from torch.testing import FileCheck

from passes.fold_conv_bn import fold_conv_bn, fold_conv_bn_in_place
from qgraph.ir import clone_module

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
BATCH_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
CALL = 'prim::CallMethod[name="forward"]'


def capture(model, example, tracing):
    # The model keeps its mode: some tests fold a BatchNorm left in training mode.
    # check_trace re-runs the model twice; these models have no data-dependent control flow.
    return torch.jit.trace(model, example, check_trace=False) if tracing else torch.jit.script(model)


def fold(model):
    return fold_conv_bn(model)


def reference_fold(scripted):
    """PyTorch's own folding of a copy of ``scripted`` (2d/3d only)."""
    return torch.jit._recursive.wrap_cpp_module(torch._C._jit_pass_fold_convbn(clone_module(scripted._c)))


def randomize_statistics(bn):
    """Running statistics and affine parameters far from their defaults, so folding shows."""
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        if bn.affine:
            bn.weight.uniform_(0.5, 2)
            bn.bias.uniform_(-1, 1)
    return bn


def example_input(dim, channels=2, size=6, batch=2):
    return torch.rand((batch, channels) + (size,) * dim)


def forward_text(module):
    return str(module.graph)


class ConvBn(nn.Module):
    def __init__(self, dim, bias=True, affine=True, eps=1e-5):
        super().__init__()
        self.conv = CONV[dim](2, 4, 3, bias=bias)
        self.bn = randomize_statistics(BATCH_NORM[dim](4, affine=affine, eps=eps))

    def forward(self, x):
        return self.bn(self.conv(x))


@pytest.mark.parametrize("tracing", [False, True], ids=["scripted", "traced"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dim", [2, 3])
def test_conv_bn_folds_like_the_reference(dim, bias, tracing):
    torch.manual_seed(0)
    eager = ConvBn(dim, bias=bias, eps=0.0023).eval()
    x = example_input(dim)
    model = capture(eager, x, tracing)
    FileCheck().check_count(CALL, 2, exactly=True).run(forward_text(model))
    reference = reference_fold(model)

    folded = fold(model)

    FileCheck().check('prim::GetAttr[name="conv"]').check_next(CALL).check_next("return").run(forward_text(folded))
    FileCheck().check_not('prim::GetAttr[name="bn"]').run(forward_text(folded))
    assert folded._c.hasattr("bn")  # the BatchNorm stays as an attribute
    torch._C._jit_pass_lint(folded.graph)
    torch._C._jit_pass_lint(folded.conv.graph)
    assert torch.equal(folded(x), reference(x))
    assert torch.equal(folded.conv.weight, reference.conv.weight)
    assert torch.equal(folded.conv.bias, reference.conv.bias)
    torch.testing.assert_close(folded(x), eager(x))


@pytest.mark.parametrize("tracing", [False, True], ids=["scripted", "traced"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_conv1d_batchnorm1d_folds(bias, tracing):
    # The reference leaves this pair unfolded; qgraph folds it.
    torch.manual_seed(0)
    eager = ConvBn(1, bias=bias).eval()
    x = example_input(1)
    model = capture(eager, x, tracing)

    folded = fold(model)

    FileCheck().check_count(CALL, 1, exactly=True).check_not('prim::GetAttr[name="bn"]').run(forward_text(folded))
    torch.testing.assert_close(folded(x), eager(x))


def test_traced_conv_without_bias_gets_a_bias_attribute_its_convolution_reads():
    torch.manual_seed(0)
    eager = ConvBn(2, bias=False).eval()
    x = example_input(2)
    model = capture(eager, x, tracing=True)
    assert not model.conv._c.hasattr("bias")

    folded = fold(model)

    FileCheck().check('prim::GetAttr[name="bias"]').check("aten::_convolution(%x, %weight").check_same("%bias").run(
        str(folded.conv.graph)
    )
    torch._C._jit_pass_lint(folded.conv.graph)
    bias = folded.conv._c.getattr("bias")
    assert isinstance(bias, torch.Tensor) and bias.shape == (4,)
    torch.testing.assert_close(folded(x), eager(x))


@pytest.mark.parametrize("tracing", [False, True], ids=["scripted", "traced"])
@pytest.mark.parametrize("dim", [1, 2])
def test_batchnorm_without_affine_parameters_folds(dim, tracing):
    torch.manual_seed(0)
    eager = ConvBn(dim, affine=False).eval()
    x = example_input(dim)
    model = capture(eager, x, tracing)
    reference = reference_fold(model) if dim > 1 else None

    folded = fold(model)

    FileCheck().check_count(CALL, 1, exactly=True).run(forward_text(folded))
    torch.testing.assert_close(folded(x), eager(x))
    if reference is not None:
        assert torch.equal(folded(x), reference(x))


class ConvOutputAlsoAdded(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3)
        self.bn = randomize_statistics(nn.BatchNorm2d(2))

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


@pytest.mark.parametrize("tracing", [False, True], ids=["scripted", "traced"])
def test_conv_output_with_another_use_is_not_folded(tracing):
    torch.manual_seed(0)
    eager = ConvOutputAlsoAdded().eval()
    x = example_input(2)
    model = capture(eager, x, tracing)
    weight = model.conv.weight.clone()

    folded = fold(model)

    FileCheck().check_count(CALL, 2, exactly=True).run(forward_text(folded))
    assert torch.equal(folded.conv.weight, weight)
    torch.testing.assert_close(folded(x), eager(x))


class ReluBetweenConvAndBn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3)
        self.bn = randomize_statistics(nn.BatchNorm2d(2))

    def forward(self, x):
        return self.bn(torch.relu(self.conv(x)))


@pytest.mark.parametrize("tracing", [False, True], ids=["scripted", "traced"])
def test_op_between_conv_and_bn_prevents_folding(tracing):
    torch.manual_seed(0)
    eager = ReluBetweenConvAndBn().eval()
    x = example_input(2)
    model = capture(eager, x, tracing)

    folded = fold(model)

    FileCheck().check(CALL).check("aten::relu").check(CALL).run(forward_text(folded))
    torch.testing.assert_close(folded(x), eager(x))


class Conv2d(nn.Module):
    """A user module that only shares torch.nn.Conv2d's name."""

    def forward(self, x):
        return x * 2


class BatchNorm2d(nn.Module):
    def forward(self, x):
        return x + 1


class ConvSubclass(nn.Conv2d):
    def forward(self, x):
        return self._conv_forward(x, self.weight, self.bias).abs()


class LookAlikes(nn.Module):
    def __init__(self):
        super().__init__()
        self.fake_conv = Conv2d()
        self.fake_bn = BatchNorm2d()
        self.sub_conv = ConvSubclass(2, 2, 3)
        self.bn = randomize_statistics(nn.BatchNorm2d(2))

    def forward(self, x):
        return self.bn(self.sub_conv(self.fake_bn(self.fake_conv(x))))


@pytest.mark.parametrize("tracing", [False, True], ids=["scripted", "traced"])
def test_only_torch_nn_classes_fold(tracing):
    torch.manual_seed(0)
    eager = LookAlikes().eval()
    x = example_input(2)
    model = capture(eager, x, tracing)

    folded = fold(model)

    FileCheck().check_count(CALL, 4, exactly=True).run(forward_text(folded))
    torch.testing.assert_close(folded(x), eager(x))


class MismatchedDimensions(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3)
        self.bn = nn.BatchNorm3d(2)

    def forward(self, x):
        return self.bn(self.conv(x))


def test_conv_and_batchnorm_of_different_dimensionality_do_not_fold():
    model = torch.jit.script(MismatchedDimensions().eval())

    folded = fold(model)

    FileCheck().check_count(CALL, 2, exactly=True).run(forward_text(folded))


@pytest.mark.parametrize("tracing", [False, True], ids=["scripted", "traced"])
def test_batchnorm_in_training_mode_is_not_folded(tracing):
    # The reference folds it anyway, replacing batch statistics by running ones.
    torch.manual_seed(0)
    eager = ConvBn(2).train()
    x = example_input(2)
    model = capture(eager, x, tracing)

    folded = fold(model)

    FileCheck().check_count(CALL, 2, exactly=True).run(forward_text(folded))


class BatchNormWithoutRunningStats(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3)
        self.bn = nn.BatchNorm2d(2, track_running_stats=False)

    def forward(self, x):
        return self.bn(self.conv(x))


@pytest.mark.parametrize("tracing", [False, True], ids=["scripted", "traced"])
def test_batchnorm_without_running_statistics_is_not_folded(tracing):
    torch.manual_seed(0)
    eager = BatchNormWithoutRunningStats().eval()
    x = example_input(2)
    model = capture(eager, x, tracing)

    folded = fold(model)

    FileCheck().check_count(CALL, 2, exactly=True).run(forward_text(folded))
    torch.testing.assert_close(folded(x), eager(x))


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.bn = randomize_statistics(nn.BatchNorm2d(3))

    def forward(self, x):
        return self.bn(self.conv(x))


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.sub = Inner()

    def forward(self, x):
        return torch.relu(self.sub(x))


@pytest.mark.parametrize("tracing", [False, True], ids=["scripted", "traced"])
def test_folds_inside_a_submodule(tracing):
    torch.manual_seed(0)
    eager = Outer().eval()
    x = example_input(2)
    model = capture(eager, x, tracing)
    reference = reference_fold(model)

    folded = fold(model)

    FileCheck().check_count(CALL, 1, exactly=True).run(str(folded.sub.graph))
    assert torch.equal(folded(x), reference(x))
    torch.testing.assert_close(folded(x), eager(x))


class SequentialBlocks(nn.Module):
    def __init__(self, dim, blocks, bias, affine):
        super().__init__()
        layers = []
        for _ in range(blocks):
            layers += [
                CONV[dim](4, 4, 3, padding=1, bias=bias),
                randomize_statistics(BATCH_NORM[dim](4, affine=affine)),
            ]
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


@pytest.mark.parametrize("tracing", [False, True], ids=["scripted", "traced"])
@pytest.mark.parametrize("dim,bias,affine", [(2, True, True), (3, False, False), (1, False, True)])
def test_several_blocks_in_a_sequential_fold(dim, bias, affine, tracing):
    torch.manual_seed(0)
    eager = SequentialBlocks(dim, 3, bias, affine).eval().double()  # double, as the seed's complex case
    x = example_input(dim, channels=4, size=4).double()
    model = capture(eager, x, tracing)
    FileCheck().check_count(CALL, 6, exactly=True).run(str(model.layers.graph))
    reference = reference_fold(model) if dim > 1 else None

    folded = fold(model)

    FileCheck().check_count(CALL, 3, exactly=True).run(str(folded.layers.graph))
    for name in ("0", "2", "4"):
        FileCheck().check(f'prim::GetAttr[name="{name}"]').run(str(folded.layers.graph))
    for name in ("1", "3", "5"):
        FileCheck().check_not(f'prim::GetAttr[name="{name}"]').run(str(folded.layers.graph))
    torch.testing.assert_close(folded(x), eager(x))
    if reference is not None:
        assert torch.equal(folded(x), reference(x))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn = randomize_statistics(nn.BatchNorm2d(3))

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class TwoBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = Block()
        self.second = Block()

    def forward(self, x):
        return self.second(self.first(x))


@pytest.mark.parametrize("tracing", [False, True], ids=["scripted", "traced"])
def test_shared_class_type_folds_each_instance_with_its_own_statistics(tracing):
    torch.manual_seed(0)
    eager = TwoBlocks().eval()
    x = example_input(2, channels=3)
    model = capture(eager, x, tracing)
    if not tracing:
        assert model.first._c._type() == model.second._c._type()
    reference = reference_fold(model)

    folded = fold(model)

    for block in (folded.first, folded.second):
        FileCheck().check_count(CALL, 1, exactly=True).check("aten::relu").run(str(block.graph))
    assert not torch.equal(folded.first.conv.weight, folded.second.conv.weight)
    assert torch.equal(folded.first.conv.weight, reference.first.conv.weight)
    assert torch.equal(folded.second.conv.bias, reference.second.conv.bias)
    assert torch.equal(folded(x), reference(x))
    torch.testing.assert_close(folded(x), eager(x))


def test_each_class_type_graph_is_matched_once(monkeypatch):
    # The pass finds its Conv -> BatchNorm calls through qgraph.quant.conv_bn.
    fold_module = sys.modules["qgraph.quant.conv_bn"]

    owners = []
    original = fold_module.find_matches

    def counting(graph, pattern, index=None):
        owners.append(next(graph.inputs()).type().qualified_name())
        return original(graph, pattern, index)

    monkeypatch.setattr(fold_module, "find_matches", counting)
    torch.manual_seed(0)
    eager = nn.Sequential(*[Block() for _ in range(6)]).eval()
    x = example_input(2, channels=3)
    model = torch.jit.script(eager)
    blocks = [getattr(model, str(i)) for i in range(6)]
    assert len({block._c._type().qualified_name() for block in blocks}) == 1

    fold_conv_bn_in_place(model)

    # Six blocks share one class type, so one Block.forward graph is matched.
    assert sum(name.endswith(".Block") for name in owners) == 1
    for block in blocks:
        FileCheck().check_count(CALL, 1, exactly=True).run(str(block.graph))
    torch.testing.assert_close(model(x), eager(x))


class ConvCalledTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.bn = randomize_statistics(nn.BatchNorm2d(2))

    def forward(self, x):
        return self.bn(self.conv(x)) + self.conv(x)


@pytest.mark.parametrize("tracing", [False, True], ids=["scripted", "traced"])
def test_conv_used_elsewhere_is_not_folded(tracing):
    # The reference folds it and so changes the other call's result.
    torch.manual_seed(0)
    eager = ConvCalledTwice().eval()
    x = example_input(2)
    model = capture(eager, x, tracing)

    folded = fold(model)

    # Tracing names the second call of the same conv forward1.
    FileCheck().check_count("prim::CallMethod", 3, exactly=True).run(forward_text(folded))
    torch.testing.assert_close(folded(x), eager(x))


class BranchyConvBn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3)
        self.bn = randomize_statistics(nn.BatchNorm2d(2))

    def forward(self, x, flag: bool):
        if flag:
            return self.bn(self.conv(x))
        return x


def test_pair_inside_an_if_branch_folds():
    torch.manual_seed(0)
    eager = BranchyConvBn().eval()
    x = example_input(2)
    model = torch.jit.script(eager)
    reference = reference_fold(model)

    folded = fold(model)

    FileCheck().check("prim::If").check(CALL).check_next("->").run(forward_text(folded))
    FileCheck().check_count(CALL, 1, exactly=True).run(forward_text(folded))
    assert torch.equal(folded(x, True), reference(x, True))
    assert torch.equal(folded(x, False), x)


class UnusedConvBn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.bn = randomize_statistics(nn.BatchNorm2d(3))
        self.head = nn.Conv2d(2, 3, 3)

    def forward(self, x):
        unused = self.bn(self.conv(x))  # noqa: F841
        return self.head(x)


class UnusedSequential(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(2, 3, 3), randomize_statistics(nn.BatchNorm2d(3)))
        self.head = nn.Conv2d(2, 3, 3)

    def forward(self, x):
        unused = self.body(x)  # noqa: F841
        return self.head(x)


@pytest.mark.parametrize("model_class", [UnusedConvBn, UnusedSequential])
def test_traced_dead_conv_bn_pair_is_dropped(model_class):
    # The reference crashes the process (SIGSEGV) on these traced models.
    torch.manual_seed(0)
    eager = model_class().eval()
    x = example_input(2)
    model = capture(eager, x, tracing=True)
    dead_graph = model.body.graph if model_class is UnusedSequential else model.graph
    FileCheck().check("NoneType = " + CALL).run(str(dead_graph))

    folded = fold(model)

    text = str(folded.body.graph) if model_class is UnusedSequential else forward_text(folded)
    FileCheck().check_not("NoneType = " + CALL).run(text)
    if model_class is UnusedSequential:
        FileCheck().check_count(CALL, 0, exactly=True).run(text)
    else:
        FileCheck().check('prim::GetAttr[name="head"]').check_next(CALL).check_next("return").run(text)
        FileCheck().check_count(CALL, 1, exactly=True).run(text)
    torch._C._jit_pass_lint(folded.graph)
    assert torch.equal(folded(x), eager(x))


def test_scripted_dead_conv_bn_pair_folds_like_the_reference():
    torch.manual_seed(0)
    eager = UnusedConvBn().eval()
    x = example_input(2)
    model = torch.jit.script(eager)
    reference = reference_fold(model)

    folded = fold(model)

    FileCheck().check_not('prim::GetAttr[name="bn"]').run(forward_text(folded))
    assert torch.equal(folded.conv.weight, reference.conv.weight)
    assert torch.equal(folded(x), eager(x))


@pytest.mark.parametrize("tracing", [False, True], ids=["scripted", "traced"])
def test_folds_a_copy_and_leaves_the_module_it_is_given_alone(tracing):
    # As PyTorch's own folding pass does: a new module comes back, the input keeps its graphs and weights.
    torch.manual_seed(0)
    eager = ConvBn(2).eval()
    x = example_input(2)
    model = capture(eager, x, tracing)
    graph_before, weight_before = forward_text(model), model.conv.weight.clone()
    reference = torch._C._jit_pass_fold_convbn(model._c)

    cpp_result = fold_conv_bn(model._c)
    python_result = fold_conv_bn(model)

    assert isinstance(cpp_result, torch._C.ScriptModule) and isinstance(python_result, torch.jit.ScriptModule)
    assert forward_text(model) == graph_before and torch.equal(model.conv.weight, weight_before)
    FileCheck().check_count(CALL, 1, exactly=True).run(str(cpp_result.forward.graph))
    assert torch.equal(cpp_result.getattr("conv").getattr("weight"), reference.getattr("conv").getattr("weight"))
    torch.testing.assert_close(python_result(x), eager(x))


@pytest.mark.parametrize("tracing", [False, True], ids=["scripted", "traced"])
def test_in_place_variant_folds_the_module_it_is_given_and_keeps_its_kind(tracing):
    torch.manual_seed(0)
    eager = ConvBn(2).eval()
    x = example_input(2)
    model = capture(eager, x, tracing)  # never run, so no stale compiled plan

    cpp_result = fold_conv_bn_in_place(model._c)

    assert cpp_result is model._c
    FileCheck().check_count(CALL, 1, exactly=True).run(forward_text(model))
    torch.testing.assert_close(model(x), eager(x))
    again = fold_conv_bn_in_place(model)
    assert again is model
    torch.testing.assert_close(again(x), eager(x))  # nothing left to fold, nothing changes


def test_rejects_a_module_that_is_not_torchscript():
    with pytest.raises(TypeError, match="ConvBn"):
        fold_conv_bn(ConvBn(2))
    with pytest.raises(TypeError, match="ConvBn"):
        fold_conv_bn_in_place(ConvBn(2))

"""passes.insert_observers and qgraph.prepare: where observers go, one behaviour per test."""

import warnings
from typing import Final, Optional

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.ao.quantization import (
    default_dynamic_qconfig,
    default_qconfig,
    float16_dynamic_qconfig,
    prepare_dynamic_jit,
    prepare_jit,
)
from torch.ao.quantization.quant_type import QuantType
from torch.testing import FileCheck

import qgraph
from helpers.models import capture as captured
from helpers.observers import graph_texts, observed_values, observer_names
from passes import insert_observers
from qgraph.ir.graph import walk
from qgraph.pipeline import inspect
from qgraph.prepare import prepare
from qgraph.quant.qconfig import script_qconfig_dict

OBSERVER = 'Observer = prim::GetAttr[name="_observer_'


def capture(model, example, tracing):
    # Seeded here: the tests draw their data after capturing.
    torch.manual_seed(0)
    return captured(model, example, tracing)


both = pytest.mark.parametrize("tracing", [False, True], ids=["scripted", "traced"])


class ConvOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x)


@both
def test_conv_input_output_and_weight_observed(tracing):
    model = capture(ConvOnly(), torch.randn(1, 3, 6, 6), tracing)
    prepared = prepare(model, {"": default_qconfig})
    assert len(observer_names(prepared)) == 2
    assert len(observer_names(prepared.conv)) == 1
    FileCheck().check(OBSERVER).check('prim::GetAttr[name="conv"]').check("prim::CallMethod").check(OBSERVER).run(
        str(prepared.graph)
    )


def test_observer_output_replaces_later_uses():
    model = capture(ConvOnly(), None, False)
    prepared = prepare(model, {"": default_qconfig})
    graph = str(prepared.graph)
    # The conv reads the observer's output, and the graph returns the output observer's result.
    FileCheck().check_count('prim::CallMethod[name="forward"](%_observer_', 2).run(graph)
    returned = next(prepared.graph.outputs())
    assert returned.node().kind() == "prim::CallMethod"
    assert returned.node().inputsAt(0).node().s("name").startswith("_observer_")


@both
def test_inplace_false_leaves_model_unchanged(tracing):
    torch.manual_seed(0)
    model = capture(ConvOnly(), torch.randn(1, 3, 6, 6), tracing)
    x = torch.randn(1, 3, 6, 6)
    before_graphs, before_out = graph_texts(model), model(x)
    prepare(model, {"": default_qconfig})
    assert graph_texts(model) == before_graphs
    assert torch.equal(model(x), before_out)
    assert observer_names(model) == []


def test_pass_inplace_on_a_cpp_module_shares_tensors_and_keeps_its_types():
    # As the reference's pass: the observers go to fresh class types. Scripting
    # hands the original types to every later instance of the same classes, so
    # observers added to them would reach models that were never prepared.
    model = capture(ConvOnly(), None, False)
    before = graph_texts(model)
    prepared = insert_observers(model._c, "forward", {"": default_qconfig}, True, QuantType.STATIC)
    reference = torch._C._jit_pass_insert_observers(
        model._c, "forward", script_qconfig_dict({"": default_qconfig}), True
    )
    assert graph_texts(model) == before and observer_names(model) == []
    assert observed_values(prepared) == observed_values(reference)
    for result in (prepared, reference):
        assert result.getattr("conv").getattr("weight") is model.conv._c.getattr("weight")
    later = capture(ConvOnly(), None, False)
    assert observer_names(later) == [] and observer_names(later.conv) == []


def test_inplace_true_returns_the_same_object():
    model = capture(ConvOnly(), None, False)
    prepared = prepare(model, {"": default_qconfig}, inplace=True)
    assert prepared is model
    assert len(observer_names(model)) == 2


def test_weight_observer_uses_weight_dtype():
    class ConvRelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return F.relu(self.conv(x))

    prepared = prepare(capture(ConvRelu(), None, False), {"": default_qconfig})
    activation = {prepared._c.getattr(n).getattr("dtype") for n in observer_names(prepared)}
    weight = {prepared.conv._c.getattr(n).getattr("dtype") for n in observer_names(prepared.conv)}
    assert len(activation) == 1 and len(weight) == 1 and activation != weight


def test_reused_functional_weight_observed_once_bias_never():
    class TwoConvsOneWeight(nn.Module):
        def forward(self, x, y, weight, bias):
            return F.conv2d(x, weight, bias) + F.conv2d(y, weight, bias)

    prepared = prepare(capture(TwoConvsOneWeight(), None, False), {"": default_qconfig})
    # x, y, weight, both conv outputs, the add; not the bias.
    assert len(observer_names(prepared)) == 6
    assert all(entry[1] != "input4" for entry in observed_values(prepared)[""])


@both
def test_general_ops_pass_observation_through(tracing):
    class ConvFlattenConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 3, 3)
            self.pool = nn.AdaptiveAvgPool2d((2, 2))
            self.conv2 = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            x = self.pool(F.max_pool2d(self.conv1(x), 1))
            x = x.reshape(x.size(0), 3, 2, 2).contiguous()
            return torch.flatten(self.conv2(x), 1)

    prepared = prepare(capture(ConvFlattenConv(), torch.randn(1, 3, 6, 6), tracing), {"": default_qconfig})
    assert len(observer_names(prepared)) == 3
    FileCheck().check(OBSERVER).check("conv1").check(OBSERVER).check_not(OBSERVER).check("conv2").check(
        OBSERVER
    ).check_not(OBSERVER).run(str(prepared.graph))


class LinearReluModule(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.fc(x))


class LinearReluFunctional(LinearReluModule):
    def forward(self, x):
        return F.relu(self.fc(x))


class LinearReluAten(LinearReluModule):
    def forward(self, x):
        return torch.relu(self.fc(x))


class LinearReluInplace(LinearReluModule):
    def forward(self, x):
        return self.fc(x).relu_()


@pytest.mark.parametrize(
    "model_class,relu_kind",
    [
        (LinearReluModule, "call:forward"),
        (LinearReluFunctional, "call_function:relu"),
        (LinearReluAten, "aten::relu"),
        (LinearReluInplace, "aten::relu_"),
    ],
)
def test_linear_relu_observes_relu_output(model_class, relu_kind):
    prepared = prepare(capture(model_class(), None, False), {"": default_qconfig})
    kinds = [entry[1] for entry in observed_values(prepared)[""]]
    assert kinds == ["input1", relu_kind]
    # One observer after the linear: the relu's, none in between.
    FileCheck().check('prim::GetAttr[name="fc"]').check("prim::CallMethod").check_count(OBSERVER, 1, exactly=True).run(
        str(prepared.graph)
    )


def test_add_relu_observes_relu_output_and_add_needs_observed_inputs():
    class AddRelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)

        def forward(self, x, y):
            a = F.relu(self.conv(x) + self.conv(x))
            b = x + y  # neither input observed: stays float, no observer
            return a, b

    prepared = prepare(capture(AddRelu(), None, False), {"": default_qconfig})
    kinds = [entry[1] for entry in observed_values(prepared)[""]]
    assert "aten::add" not in kinds
    assert kinds.count("call_function:relu") == 1


class SharedReluAfter(nn.Module):
    """One ReLU module called twice; tracing records the second call as ``forward1``."""

    def __init__(self, second: str):
        super().__init__()
        self.second = second
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(8, 8)
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.relu(self.conv(x))
        if self.second == "add":
            return self.relu(y + x)
        if self.second == "mul":
            return self.relu(y * x)
        if self.second == "conv":
            return self.relu(self.conv(y))
        return self.relu(self.fc(y))


@pytest.mark.parametrize("second", ["add", "conv", "linear", "mul"])
def test_traced_second_relu_call_observed_like_reference(second):
    # add/conv/linear -> relu.forward1 observe the relu output; the reference's
    # mul patterns ask for ``forward`` exactly, so mul -> relu.forward1 observes the mul.
    model = capture(SharedReluAfter(second), torch.randn(1, 3, 8, 8), True)
    assert 'name="forward1"' in str(model.graph)
    prepared = prepare(model, {"": default_qconfig})
    reference = prepare_jit(model, {"": default_qconfig})
    assert observed_values(prepared) == observed_values(reference)
    kinds = [entry[1] for entry in observed_values(prepared)[""]]
    assert kinds[-1] == ("aten::mul" if second == "mul" else "call:forward1")


def test_helper_function_propagates_observed():
    def shuffle(x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.size()
        return x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)

    class WithShuffle(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(4, 4, 1)
            self.conv2 = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.conv2(shuffle(self.conv1(x)))

    globals()["shuffle"] = shuffle  # scripting resolves the helper by name
    prepared = prepare(capture(WithShuffle(), None, False), {"": default_qconfig})
    assert len(observer_names(prepared)) == 3


class Sub(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 5)

    def forward(self, x):
        return self.fc(x)


class ConvThenSub(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3)
        self.sub = Sub()

    def forward(self, x):
        return self.sub(self.conv(x))


def test_child_qconfig_observes_at_call_site():
    prepared = prepare(capture(ConvThenSub(), None, False), {"sub.fc": default_qconfig})
    assert len(observer_names(prepared)) == 2
    assert observer_names(prepared.conv) == []
    assert observer_names(prepared.sub) == []
    assert len(observer_names(prepared.sub.fc)) == 1


def test_none_turns_quantization_off_below_path():
    prepared = prepare(capture(ConvThenSub(), None, False), {"": default_qconfig, "sub": None})
    assert observer_names(prepared.sub.fc) == []
    assert len(observer_names(prepared.conv)) == 1


class TwoConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 3)
        self.conv2 = nn.Conv2d(3, 3, 3)

    def forward(self, x):
        return self.conv2(self.conv1(x))


def test_shared_class_type_same_observer_names_own_instances():
    prepared = prepare(capture(TwoConvs(), None, False), {"": default_qconfig})
    names1, names2 = observer_names(prepared.conv1), observer_names(prepared.conv2)
    assert names1 == names2 and len(names1) == 1
    prepared(torch.randn(1, 3, 8, 8))
    first = prepared.conv1._c.getattr(names1[0])
    second = prepared.conv2._c.getattr(names2[0])
    assert not torch.equal(first.getattr("min_val"), second.getattr("min_val"))


def test_traced_instances_have_own_types_as_in_reference():
    model = capture(TwoConvs(), torch.randn(1, 3, 8, 8), True)
    prepared = prepare(model, {"": default_qconfig})
    assert observed_values(prepared) == observed_values(prepare_jit(model, {"": default_qconfig}))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.inner = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.inner(self.conv(x))


class TwoBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = Block()
        self.b = Block()

    def forward(self, x):
        return self.b(self.a(x))


@both
def test_child_of_one_shared_instance_configured_differently(tracing):
    # The reference fails on the scripted model ("... is not compatible with the type ...").
    model = capture(TwoBlocks(), torch.randn(1, 3, 4, 4), tracing)
    prepared = prepare(model, {"": default_qconfig, "a.inner": None})
    assert observer_names(prepared.a.inner) == []
    assert len(observer_names(prepared.b.inner)) == 1
    assert len(observer_names(prepared.a.conv)) == 1
    prepared(torch.randn(1, 3, 4, 4))


class Branches(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.other = nn.Conv2d(3, 3, 1)

    def forward(self, x, flag: bool):
        x = self.conv(x)
        if flag:
            y = self.other(x)
        else:
            y = torch.flatten(x, 2)
        return y


def test_if_branches_observed_once_and_consistently():
    prepared = prepare(capture(Branches(), None, False), {"": default_qconfig})
    # input, conv output (shared by both branches), the other conv's output
    assert len(observer_names(prepared)) == 3
    reference = prepare_jit(capture(Branches(), None, False), {"": default_qconfig})
    assert observed_values(prepared) == observed_values(reference)


def test_branch_that_raises_is_ignored():
    class RaisingBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x, flag: bool):
            if flag:
                y = self.conv(x)
            else:
                raise RuntimeError("unsupported")
            return y

    model = capture(RaisingBranch(), None, False)
    prepared = prepare(model, {"": default_qconfig})
    assert observed_values(prepared) == observed_values(prepare_jit(model, {"": default_qconfig}))


def test_inconsistent_if_branches_leave_the_if_output_unobserved():
    class Inconsistent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x, flag: bool):
            if flag:
                y = self.conv(x)
            else:
                y = torch.exp(x)
            return y

    # The reference raises "observed consistently"; the conv branch keeps its
    # observer and the `if` result gets one of its own after the `if`.
    prepared = prepare(capture(Inconsistent(), None, False), {"": default_qconfig})
    assert len(observer_names(prepared)) == 3  # x, the conv output, the `if` result
    FileCheck().check("prim::If").check("block0").check("_observer_").check("block1").check_not("_observer_").check(
        "aten::exp"
    ).check("_observer_").run(str(prepared.graph))


class Exp(nn.Module):
    def forward(self, x):
        return torch.exp(x)


class BranchThenHead(nn.Module):
    def __init__(self, other: nn.Module):
        super().__init__()
        self.conv, self.other, self.head = nn.Conv2d(3, 3, 1), other, nn.Conv2d(3, 3, 1)

    def forward(self, x, flag: bool):
        if flag:
            y = self.conv(x)
        else:
            y = self.other(x)
        return self.head(y) + 1.0


def test_ops_after_inconsistent_if_branches_are_observed_per_branch():
    # The reference raises "observed consistently". The head after the `if` moves into
    # each branch, so each side calibrates its own head output range.
    prepared = prepare(capture(BranchThenHead(Exp()), None, False), {"": default_qconfig})
    graph = prepared.graph
    FileCheck().check("prim::If").check("block0").check('name="conv"').check(OBSERVER).check('name="head"').check(
        OBSERVER
    ).check("aten::add").check("block1").check('name="other"').check(OBSERVER).check('name="head"').check(
        OBSERVER
    ).check("aten::add").check("return").run(str(graph))
    assert next(graph.outputs()).node().kind() == "prim::If"
    # Calibrating one side leaves the other side's head observer untouched.
    prepared(torch.randn(1, 3, 4, 4), True)
    head_observers = [
        node.inputsAt(0).node().s("name")
        for node in walk(graph)
        if node.kind() == "prim::CallMethod"
        and node.inputsAt(0).node().kind() == "prim::GetAttr"
        and node.inputsAt(0).node().s("name").startswith("_observer_")
        and node.inputsAt(1).node().kind() == "prim::CallMethod"
        and node.inputsAt(1).node().inputsAt(0).node().s("name") == "head"
    ]
    assert len(head_observers) == 2
    assert [bool(torch.isfinite(getattr(prepared, name).min_val)) for name in head_observers] == [True, False]


class TwoBranchPoints(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.head = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)

    def forward(self, x, first: bool, second: bool):
        if first:
            x = self.conv1(x)
        else:
            x = torch.exp(x)
        if second:
            x = self.conv2(x)
        else:
            x = torch.exp(-x)
        return self.head(x), first


def test_moved_continuations_compute_what_the_model_computes():
    torch.manual_seed(0)
    model = capture(TwoBranchPoints(), None, False)
    prepared = prepare(model, {"": default_qconfig})
    prepared.graph.lint()
    # One head per path through the two ifs.
    assert str(prepared.graph).count('prim::GetAttr[name="head"]') == 4
    x = torch.randn(1, 3, 4, 4)
    for first in (True, False):
        for second in (True, False):
            assert torch.equal(prepared(x, first, second)[0], model(x, first, second)[0])


def test_ops_after_consistent_if_branches_stay_after_the_if_like_the_reference():
    model = capture(BranchThenHead(nn.Conv2d(3, 3, 1)), None, False)
    prepared = prepare(model, {"": default_qconfig})
    assert observed_values(prepared) == observed_values(prepare_jit(model, {"": default_qconfig}))
    FileCheck().check("prim::If").check("block1").check("-> (").check('name="head"').run(str(prepared.graph))


class Stages(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([Sub() for _ in range(2)])

    def forward(self, x):
        states = []
        for layer in self.layers:
            states.append(layer(x))
        return torch.cat(states)


def test_module_list_loop_matches_reference():
    model = capture(Stages(), None, False)
    prepared = prepare(model, {"": default_qconfig})
    assert observed_values(prepared) == observed_values(prepare_jit(model, {"": default_qconfig}))
    layers = prepared._c.getattr("layers")
    assert all(len(observer_names(layers.getattr(str(i)).getattr("fc"))) == 1 for i in range(2))


@torch.jit.interface
class Operator(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pass


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * 2


class HoldsInterface(nn.Module):
    op: Operator

    def __init__(self):
        super().__init__()
        self.op = Scale()

    def forward(self, x):
        return self.op(x)


def test_interface_typed_submodule():
    model = capture(HoldsInterface(), None, False)
    prepared = prepare(model, {"": default_qconfig})
    assert observed_values(prepared) == observed_values(prepare_jit(model, {"": default_qconfig}))
    assert len(observer_names(prepared.op.fc)) == 1


class Forked(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 5)

    def forward(self, x):
        future = torch.jit._fork(self.fc, x)
        return torch.jit._wait(future)


def test_fork_wait_inlined_and_observed():
    model = capture(Forked(), None, False)
    prepared = prepare(model, {"": default_qconfig})
    assert "prim::fork" not in str(prepared.graph)
    assert len(observer_names(prepared)) == 2
    assert len(observer_names(prepared.fc)) == 1


def test_dynamic_observes_linear_weights_and_inputs_only():
    class ConvLinear(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(self.conv(x).permute(0, 2, 3, 1))

    model = capture(ConvLinear(), None, False)
    prepared = prepare(model, {"": default_dynamic_qconfig}, quant_type="dynamic")
    assert observer_names(prepared.conv) == []
    assert len(observer_names(prepared.fc)) == 1
    assert observed_values(prepared) == observed_values(prepare_dynamic_jit(model, {"": default_dynamic_qconfig}))


def test_dynamic_fp16_observes_weights_only():
    prepared = prepare(capture(Sub(), None, False), {"": float16_dynamic_qconfig}, quant_type=QuantType.DYNAMIC)
    assert observer_names(prepared) == []
    assert len(observer_names(prepared.fc)) == 1


def test_input_read_under_two_qconfigs_takes_first_consumer():
    class TwoConsumers(nn.Module):
        def __init__(self):
            super().__init__()
            self.first = nn.Linear(4, 4)
            self.second = nn.Linear(4, 4)

        def forward(self, x):
            return self.first(x) + self.second(x)

    other = default_qconfig._replace(activation=torch.ao.quantization.HistogramObserver)
    prepared = prepare(capture(TwoConsumers(), None, False), {"first": default_qconfig, "second": other})
    entries = observed_values(prepared)[""]
    assert entries[0][1] == "input1" and entries[0][2] == "MinMaxObserver"


def test_pass_takes_scripted_or_plain_qconfigs_and_quant_type_strings():
    model = capture(ConvOnly(), None, False)
    plain = insert_observers(model, "forward", {"": default_qconfig}, False, "static")
    scripted = insert_observers(
        model._c, "forward", script_qconfig_dict({"": default_qconfig}), False, QuantType.STATIC
    )
    assert isinstance(plain, torch.jit.ScriptModule) and isinstance(scripted, torch._C.ScriptModule)
    assert observed_values(plain) == observed_values(scripted)
    with pytest.raises(ValueError, match="quant_type"):
        insert_observers(model, "forward", {"": default_qconfig}, False, "weird")


class NeedsCleanUp(nn.Module):
    """A list built by ``append`` and stacked, and a linear spelled as ``matmul`` with a transposed weight."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 1)
        self.conv2 = nn.Conv2d(3, 3, 1)
        self.weight = nn.Parameter(torch.randn(4, 3))

    def forward(self, x):
        first = self.conv1(x)
        pieces = []
        pieces.append(first)
        y = torch.stack(pieces, 0)[0]
        return torch.matmul(self.conv2(y).mean((2, 3)), self.weight.t())


@both
def test_pass_called_alone_cleans_up_graphs_like_the_reference_pass(tracing):
    model = capture(NeedsCleanUp(), torch.randn(1, 3, 4, 4), tracing)
    qconfig_dict = {"": default_qconfig}
    alone = insert_observers(model, "forward", qconfig_dict, False, QuantType.STATIC)
    reference = torch._C._jit_pass_insert_observers(model._c, "forward", script_qconfig_dict(qconfig_dict), False)
    # The stacked list is observed once, as a list literal would be, and the
    # matmul becomes a linear whose weight is observed: what the reference's
    # pass does alone, and what prepare does.
    assert observed_values(alone) == observed_values(reference) == observed_values(prepare(model, qconfig_dict))
    assert "aten::append" not in str(alone.graph) and "aten::linear" in str(alone.graph)
    # inplace=False: the caller's graph keeps its list mutation and matmul.
    assert "aten::matmul" in str(model.graph)
    assert tracing or "aten::append" in str(model.graph)


def test_loop_body_is_observed():
    class Looping(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x, n: int):
            for _ in range(n):
                x = self.fc(x)
            return x

    # The reference warns and observes nothing; the carried value is observed
    # where it enters the loop and on the back edge (the fc output), each with
    # an observer of its own.
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        prepared = prepare(capture(Looping(), None, False), {"": default_qconfig})
    assert len(observer_names(prepared)) == 2
    assert len(observer_names(prepared.fc)) == 1
    before, body = str(prepared.graph).split("prim::Loop", 1)
    observer_call = 'CallMethod[name="forward"](%_observer_'
    assert before.count(observer_call) == 1 and body.count(observer_call) == 1


def test_prepare_input_checks():
    with pytest.raises(ValueError, match="script it"):
        prepare(ConvOnly(), {"": default_qconfig})
    with pytest.raises(ValueError, match="1"):
        prepare(capture(ConvOnly(), None, False), {1: default_qconfig})

    class NoForward(nn.Module):
        @torch.jit.export
        def run(self, x):
            return x

    with pytest.raises(ValueError, match="forward"):
        prepare(torch.jit.script(NoForward()), {"": default_qconfig})


def test_pipeline_can_dump_every_prepare_stage(tmp_path):
    with inspect(dump_dir=str(tmp_path), count_nodes=True) as report:
        prepare(capture(ConvOnly(), None, False), {"": default_qconfig})
    stages = [record.stage for record in report.stages if record.pipeline == "prepare"]
    assert stages[0] == "fold-conv-bn" and stages[-1] == "insert-observers"
    assert len(list(tmp_path.iterdir())) >= len(stages)


class ListBuilding(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        pieces = [x]
        pieces.append(x + 1)
        pieces[0] = x * 2
        after_call = []
        after_call.append(self.fc(x))
        in_loop = []
        for _ in range(2):
            in_loop.append(x)
        return torch.cat(pieces), torch.cat(after_call), torch.cat(in_loop)


def test_list_mutation_folded_where_the_reference_folds_it():
    from passes import remove_list_mutation

    model = capture(ListBuilding(), None, False)
    ours, reference = model.graph.copy(), model.graph.copy()
    folded = remove_list_mutation(ours)
    torch._C._jit_pass_remove_mutation(reference)
    assert folded == 2
    assert str(ours).count("aten::append") == str(reference).count("aten::append") == 2
    assert sorted(n.kind() for n in ours.nodes()) == sorted(n.kind() for n in reference.nodes())
    x = torch.randn(2, 4)
    expected = model(x)
    check = torch._C._create_function_from_graph("check_list_folding", ours)
    for got, want in zip(check(model._c, x), expected):
        assert torch.equal(got, want)


def test_embedding_bag_weight_only_matches_reference():
    from torch.ao.quantization import PerChannelMinMaxObserver, PlaceholderObserver, QConfig

    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.EmbeddingBag(10, 4, mode="sum")

        def forward(self, indices, offsets):
            return self.emb(indices, offsets)

    weight_only = QConfig(
        activation=PlaceholderObserver.with_args(dtype=torch.float),
        weight=PerChannelMinMaxObserver.with_args(
            dtype=torch.quint8, qscheme=torch.per_channel_affine_float_qparams, ch_axis=0
        ),
    )
    model = capture(Bag(), None, False)
    prepared = prepare(model, {"": weight_only})
    assert observed_values(prepared) == observed_values(prepare_jit(model, {"": weight_only}))
    assert len(observer_names(prepared.emb)) == 1


class TrainingOnlyHead(nn.Module):
    """GoogLeNet's aux heads: in eval mode the `if self.training:` result is None."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.aux = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        aux: Optional[torch.Tensor] = None
        if self.training:
            aux = self.aux(y)
        return y, aux


def test_an_optional_tensor_gets_no_observer():
    prepared = prepare(capture(TrainingOnlyHead(), None, False), {"": default_qconfig})
    for node in walk(prepared.graph):
        if node.kind() == "prim::CallMethod" and "_observer_" in node.inputsAt(0).node().s("name"):
            assert str(node.inputsAt(1).type()) == "Tensor", str(node)
    y, aux = prepared(torch.randn(1, 3, 4, 4))
    assert aux is None and y.shape == (1, 4, 4, 4)


class MaybeResidual(nn.Module):
    """torchvision's quantizable blocks: a FloatFunctional that only residual instances call.

    ``residual`` is a constant, so each value gets a class type of its own
    and the plain one's forward has no call of ``skip_add`` at all, while
    both ``skip_add`` share FloatFunctional's class type.
    """

    residual: Final[bool]

    def __init__(self, residual: bool):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.residual = residual
        self.skip_add = torch.ao.nn.quantized.FloatFunctional()

    def forward(self, x):
        y = self.conv(x)
        if self.residual:
            return self.skip_add.add(x, y)
        return y


class ResidualAndPlain(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = MaybeResidual(True)
        self.second = MaybeResidual(False)

    def forward(self, x):
        return self.second(self.first(x))


def test_an_instance_forward_never_calls_gets_observers_of_its_own():
    # The observer slot belongs to the shared class type; an instance left
    # without a value in it crashes the process when the submodules are listed.
    model = capture(ResidualAndPlain(), None, False)
    prepared = prepare(model, {"": default_qconfig})
    first, second = (getattr(prepared, name).skip_add for name in ("first", "second"))
    assert observer_names(first) == observer_names(second) != []
    assert all(getattr(first, name) is not getattr(second, name) for name in observer_names(first))
    assert len(list(prepared.named_modules())) > 6
    x = torch.randn(1, 4, 3, 3)
    prepared(x)
    quantized = qgraph.convert_jit(prepared)
    assert quantized(x).shape == (1, 4, 3, 3)

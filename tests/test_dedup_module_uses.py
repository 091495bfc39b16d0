"""dedup_module_uses: every call of a submodule instance gets an instance of its own."""

import io

import pytest
import torch
from torch.testing import FileCheck

from helpers.graph_text import normalized_graph_text
from passes.dedup_module_uses import dedup_module_uses
from qgraph.ir import children_of, clone_module


def wrapped_clone(scripted):
    return torch.jit._recursive.wrap_cpp_module(clone_module(scripted._c))


def ours_and_reference(model, example=None):
    """(our deduplicated module, the reference's), each a fresh clone of one capture."""
    captured = torch.jit.trace(model, example) if example is not None else torch.jit.script(model)
    ours, theirs = wrapped_clone(captured), wrapped_clone(captured)
    dedup_module_uses(ours)
    torch._C._jit_pass_dedup_module_uses(theirs._c)
    return ours, torch.jit._recursive.wrap_cpp_module(theirs._c)


def child_names(module):
    return [name for name, _ in children_of(module._c)]


def receivers(graph):
    """The attribute each ``prim::CallMethod`` of the top block is called on, in program order."""
    return [n.inputsAt(0).node().s("name") for n in graph.nodes() if n.kind() == "prim::CallMethod"]


def assert_same_graphs(ours, theirs):
    for method in ours._c._method_names():
        assert normalized_graph_text(ours._c._get_method(method).graph) == normalized_graph_text(
            theirs._c._get_method(method).graph
        ), method


class ReluTwice(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.relu = torch.nn.ReLU()

    def forward(self, x):
        return self.relu(self.relu(x) - 0.25)


def test_second_call_reads_a_copy():
    torch.manual_seed(0)
    model = ReluTwice()
    ours, theirs = ours_and_reference(model)
    assert child_names(ours) == ["relu", "relu_0"]
    assert receivers(ours.graph) == ["relu", "relu_0"]
    FileCheck().check('prim::GetAttr[name="relu_0"]').check('prim::CallMethod[name="forward"]').check(
        "aten::sub"
    ).check('prim::CallMethod[name="forward"]').run(str(ours.graph))
    assert_same_graphs(ours, theirs)
    x = torch.randn(3, 4)
    assert torch.equal(ours(x), model(x))


class ConvThrice(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 2, 1)
        self.conv_0 = torch.nn.Identity()

    def forward(self, x):
        return self.conv(self.conv_0(self.conv(self.conv(x))))


def test_copies_take_the_first_free_numbered_name():
    torch.manual_seed(0)
    model = ConvThrice().eval()
    ours, theirs = ours_and_reference(model)
    assert child_names(ours) == ["conv", "conv_0", "conv_1", "conv_2"]
    assert_same_graphs(ours, theirs)
    x = torch.randn(1, 2, 3, 3)
    assert torch.equal(ours(x), model(x))


def test_copies_are_deep_and_share_the_class_type():
    torch.manual_seed(0)
    ours, _ = ours_and_reference(ConvThrice().eval())
    original, copy = ours._c.getattr("conv"), ours._c.getattr("conv_1")
    assert copy._type() == original._type()
    assert torch.equal(copy.getattr("weight"), original.getattr("weight"))
    with torch.no_grad():
        copy.getattr("weight").add_(1.0)
    assert not torch.equal(copy.getattr("weight"), original.getattr("weight"))


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.act = torch.nn.Hardtanh(-0.5, 0.5)
        self.linear = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.act(self.linear(x))


class CallsThroughPaths(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()

    def forward(self, x):
        y = self.block(x)
        return self.block.act(self.block.act(y * 3.0) - 0.25)


def test_call_through_a_path_registers_the_copy_next_to_the_original():
    torch.manual_seed(0)
    model = CallsThroughPaths()
    ours, theirs = ours_and_reference(model)
    assert child_names(ours) == ["block"]
    assert child_names(ours.block) == ["act", "linear", "act_0"]
    FileCheck().check('prim::GetAttr[name="block"]').check('prim::GetAttr[name="act_0"]').run(str(ours.graph))
    # The call of self.block.act inside Block.forward is not one of this method's calls.
    assert receivers(ours.block.graph) == ["linear", "act"]
    assert_same_graphs(ours, theirs)
    x = torch.randn(2, 4)
    assert torch.equal(ours(x), model(x))


class HelperMethod(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.relu = torch.nn.ReLU()

    def forward(self, x):
        return self.scaled(self.relu(x))

    @torch.jit.export
    def scaled(self, x):
        return self.relu(x - 1.0) * 2.0


def test_calls_in_other_methods_of_the_module_count_too():
    torch.manual_seed(0)
    model = HelperMethod()
    ours, theirs = ours_and_reference(model)
    assert child_names(ours) == ["relu", "relu_0"]
    assert_same_graphs(ours, theirs)
    x = torch.randn(5)
    assert torch.equal(ours(x), model(x))


class CallInBranch(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.relu = torch.nn.ReLU6()

    def forward(self, x, flag: bool):
        if flag:
            x = self.relu(x * 4.0)
        return self.relu(x - 1.0)


def test_call_in_a_branch_is_the_copy_as_in_the_reference():
    torch.manual_seed(0)
    model = CallInBranch()
    ours, theirs = ours_and_reference(model)
    # The reference looks at a block's own calls before the calls nested in
    # its blocks, so the call after the `if` keeps the original.
    if_node = ours.graph.findNode("prim::If")
    branch_reads = [n.s("name") for b in if_node.blocks() for n in b.nodes() if n.kind() == "prim::GetAttr"]
    assert branch_reads == ["relu_0"]
    assert_same_graphs(ours, theirs)
    x = torch.randn(6)
    for flag in (True, False):
        assert torch.equal(ours(x, flag), model(x, flag))


class Doubler(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.relu = torch.nn.ReLU()

    def forward(self, x):
        return self.relu(self.relu(x) - 0.5)


class TwoDoublers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.first = Doubler()
        self.second = Doubler()

    def forward(self, x):
        return self.second(self.first(x) + 1.0)


def test_calls_inside_submodule_methods_stay_shared_by_default():
    torch.manual_seed(0)
    model = TwoDoublers()
    ours, theirs = ours_and_reference(model)
    assert child_names(ours.first) == ["relu"]
    assert child_names(ours.second) == ["relu"]
    assert_same_graphs(ours, theirs)


def test_nested_dedups_submodule_methods_in_every_instance_of_their_type():
    torch.manual_seed(0)
    model = TwoDoublers()
    scripted = wrapped_clone(torch.jit.script(model))
    assert scripted.first._c._type() == scripted.second._c._type()
    dedup_module_uses(scripted, nested=True)
    for name in ("first", "second"):
        assert child_names(getattr(scripted, name)) == ["relu", "relu_0"]
    assert receivers(scripted.first.graph) == ["relu", "relu_0"]
    x = torch.randn(3)
    assert torch.equal(scripted(x), model(x))
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    assert torch.equal(torch.jit.load(buffer)(x), model(x))


class DoublerTwice(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = Doubler()

    def forward(self, x):
        return self.inner(self.inner(x) * 2.0)


def test_nested_also_reaches_copies_made_one_level_up():
    torch.manual_seed(0)
    model = DoublerTwice()
    scripted = wrapped_clone(torch.jit.script(model))
    dedup_module_uses(scripted, nested=True)
    assert child_names(scripted) == ["inner", "inner_0"]
    assert child_names(scripted.inner) == child_names(scripted.inner_0) == ["relu", "relu_0"]
    x = torch.randn(4)
    assert torch.equal(scripted(x), model(x))


class TracedRepeats(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.act = torch.nn.Hardswish()

    def forward(self, x):
        return self.act(self.act(self.act(x) + 1.0) * 0.5)


def test_traced_calls_sharing_one_read_each_get_their_own_instance():
    torch.manual_seed(0)
    model = TracedRepeats()
    x = torch.randn(2, 3)
    traced = wrapped_clone(torch.jit.trace(model, x))
    reads = [n for n in traced.graph.nodes() if n.kind() == "prim::GetAttr"]
    assert len(reads) == 1  # the trace reads self.act once for all three calls
    dedup_module_uses(traced)
    assert child_names(traced) == ["act", "act_0", "act_1"]
    assert receivers(traced.graph) == ["act", "act_0", "act_1"]
    traced.graph.lint()
    assert torch.equal(traced(x), model(x))


def test_traced_call_through_a_path_keeps_the_first_call_on_the_original():
    torch.manual_seed(0)
    model = CallsThroughPaths()
    x = torch.randn(2, 4)
    ours, theirs = ours_and_reference(model, x)
    assert child_names(ours.block) == child_names(theirs.block) == ["act", "linear", "act_0"]
    # The trace reads block.act once for both calls; the reference renames
    # that read, so both calls go to the copy and the original is left unused.
    assert receivers(ours.graph)[1:] == ["act", "act_0"]
    assert receivers(theirs.graph)[1:] == ["act_0", "act_0"]
    assert torch.equal(ours(x), model(x))
    assert torch.equal(ours(x), theirs(x))


def test_python_wrapper_is_updated_in_place_and_cpp_module_returned_as_is():
    torch.manual_seed(0)
    scripted = wrapped_clone(torch.jit.script(ReluTwice()))
    assert dedup_module_uses(scripted) is scripted
    assert isinstance(scripted.relu_0, torch.jit.ScriptModule)
    cpp = clone_module(torch.jit.script(ReluTwice())._c)
    assert dedup_module_uses(cpp) is cpp
    assert cpp.hasattr("relu_0")


def test_single_calls_change_nothing():
    scripted = wrapped_clone(torch.jit.script(Block()))
    before = str(scripted.graph)
    dedup_module_uses(scripted)
    assert str(scripted.graph) == before
    assert child_names(scripted) == ["act", "linear"]


def test_saves_and_loads():
    torch.manual_seed(0)
    model = ConvThrice().eval()
    ours, _ = ours_and_reference(model)
    buffer = io.BytesIO()
    torch.jit.save(ours, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    x = torch.randn(1, 2, 2, 2)
    assert torch.equal(loaded(x), model(x))


def test_rejects_an_eager_module():
    with pytest.raises(TypeError, match="TorchScript module"):
        dedup_module_uses(ReluTwice())

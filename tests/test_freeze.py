"""passes.freeze: weights prepacked from their attributes, then PyTorch's freezing.

The reference for every test is what finalize did before this pass existed:
``torch._C._freeze_module`` followed by ``passes.fold_prepacking``. Outputs
must be equal bit for bit, before and after a save/load round trip.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.testing import FileCheck

from helpers.models import reloaded
from passes import fold_prepacking, freeze


def _clone(module: torch.jit.ScriptModule) -> torch._C.ScriptModule:
    return torch._C._hack_do_not_use_clone_module_with_class(module._c, [], [])


def _frozen_by_reference(module: torch.jit.ScriptModule, preserved=()) -> torch.jit.ScriptModule:
    frozen = torch._C._freeze_module(_clone(module), list(preserved))
    return torch.jit._recursive.wrap_cpp_module(fold_prepacking(frozen))


def _frozen_by_pass(module: torch.jit.ScriptModule, preserved=()) -> torch.jit.ScriptModule:
    frozen = freeze(_clone(module), list(preserved))
    return torch.jit._recursive.wrap_cpp_module(fold_prepacking(frozen))


def _assert_same_outputs(ours, reference, x) -> None:
    expected = reference(x)
    assert torch.equal(ours(x), expected)
    assert torch.equal(reloaded(ours)(x), expected)


class PackedLinears(nn.Module):
    """Two linear layers whose weights are quantized and prepacked inside forward, as finalize leaves them."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(6, 5)
        self.second = nn.Linear(5, 3, bias=False)

    def forward(self, x):
        x_q = torch.quantize_per_tensor(x, 0.05, 64, torch.quint8)
        w1 = torch.quantize_per_tensor(self.first.weight, 0.01, 0, torch.qint8)
        packed1 = torch.ops.quantized.linear_prepack(w1, self.first.bias)
        y = torch.ops.quantized.linear(x_q, packed1, 0.1, 60)
        w2 = torch.quantize_per_channel(
            self.second.weight, torch.full([3], 0.02), torch.zeros(3, dtype=torch.long), 0, torch.qint8
        )
        packed2 = torch.ops.quantized.linear_prepack(w2, self.second.bias)
        return torch.ops.quantized.linear(y, packed2, 0.2, 70).dequantize()


def _structure(graph: torch._C.Graph) -> list:
    """Each node's kind with what it reads, constants by value and attributes by name."""

    def describe(value):
        node = value.node()
        if node.kind() == "prim::Constant":
            return repr(value.toIValue())
        if node.kind() == "prim::GetAttr":
            return node.s("name")
        return node.kind() if node.kind() != "prim::Param" else f"input{value.offset()}"

    return [
        (node.kind(), [describe(v) for v in node.inputs()])
        for node in graph.nodes()
        if node.kind() not in ("prim::Constant", "prim::GetAttr")
    ]


def _scripted(model: nn.Module) -> torch.jit.ScriptModule:
    scripted = torch.jit.script(model.eval())
    torch._C._jit_pass_inline(scripted.graph)
    return scripted


def test_weights_are_prepacked_into_attributes_before_freezing():
    torch.manual_seed(0)
    model = _scripted(PackedLinears())
    x = torch.randn(4, 6)
    ours = _frozen_by_pass(model)
    graph = str(ours.graph)
    FileCheck().check('prim::GetAttr[name="_packed_params_0"]').check("quantized::linear(").check(
        'prim::GetAttr[name="_packed_params_1"]'
    ).check("quantized::linear(").run(graph)
    FileCheck().check_not("_prepack").check_not("aten::quantize_per_channel").run(graph)
    _assert_same_outputs(ours, _frozen_by_reference(model), x)


def test_only_attribute_fed_prepacks_are_done_early():
    torch.manual_seed(0)
    model = _scripted(PackedLinears())
    ours = freeze(_clone(model))
    # The first weight comes from attributes and constants: packed ahead, no tensor is left.
    names = [name for name, _ in torch._C._jit_debug_module_iterators(ours)["named_attributes_r"]]
    assert names == ["_packed_params_0"]
    # The second one's scales are built by aten::full in forward: freezing folds
    # them to constants and fold_prepacking takes the prepack from there.
    FileCheck().check_count("quantized::linear_prepack", 1, exactly=True).run(str(ours._get_method("forward").graph))


class MutatedBuffer(nn.Module):
    """A weight buffer written in place by forward: freezing must not fold it, so neither may we."""

    def __init__(self):
        super().__init__()
        self.register_buffer("weight", torch.randn(3, 4))

    def forward(self, x):
        self.weight.add_(0.5)
        w = torch.quantize_per_tensor(self.weight, 0.02, 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(w, None)
        x_q = torch.quantize_per_tensor(x, 0.05, 64, torch.quint8)
        return torch.ops.quantized.linear(x_q, packed, 0.2, 64).dequantize()


def test_a_weight_written_in_place_is_left_to_run_time():
    torch.manual_seed(0)
    model = _scripted(MutatedBuffer())
    x = torch.randn(2, 4)
    ours = _frozen_by_pass(model)
    FileCheck().check("aten::add_").check("quantized::linear_prepack").run(str(ours.graph))
    reference = _frozen_by_reference(model)
    # Each call adds to the buffer again, so both are called the same number of times.
    assert torch.equal(ours(x), reference(x))
    assert torch.equal(ours(x), reference(x))


class CountingCalls(nn.Module):
    """forward sets an attribute: nothing is prepacked ahead of freezing."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.calls = 0

    def forward(self, x):
        self.calls = self.calls + 1
        w = torch.quantize_per_tensor(self.fc.weight, 0.02, 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(w, self.fc.bias)
        x_q = torch.quantize_per_tensor(x, 0.05, 64, torch.quint8)
        return torch.ops.quantized.linear(x_q, packed, 0.2, 64).dequantize()


def test_a_module_that_sets_attributes_is_frozen_as_it_is():
    torch.manual_seed(0)
    model = _scripted(CountingCalls())
    x = torch.randn(2, 4)
    module = _clone(model)
    frozen = freeze(module)
    assert not module.hasattr("_packed_params_0")
    FileCheck().check("prim::SetAttr").run(str(frozen._get_method("forward").graph))
    reference = _frozen_by_reference(model)
    assert torch.equal(torch.jit._recursive.wrap_cpp_module(fold_prepacking(frozen))(x), reference(x))


def test_preserved_attributes_stay_and_nothing_is_prepacked_early():
    torch.manual_seed(0)
    model = _scripted(PackedLinears())
    x = torch.randn(4, 6)
    ours = _frozen_by_pass(model, ["first"])
    assert ours._c.hasattr("first")
    assert ours._c.getattr("first").hasattr("weight")
    _assert_same_outputs(ours, _frozen_by_reference(model, ["first"]), x)


def test_preserved_attrs_must_be_a_list_of_names():
    model = _scripted(PackedLinears())
    try:
        freeze(_clone(model), "first")
    except TypeError as err:
        assert "preserved_attrs" in str(err)
    else:
        raise AssertionError("a string for preserved_attrs was accepted")


class ConvStack(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1, groups=2), nn.Linear(6, 5))

    def forward(self, x):
        return self.body(x)


def test_quantized_model_through_the_pipeline_equals_the_reference_freeze(monkeypatch):
    """convert_jit with this pass against convert_jit freezing with torch._C._freeze_module alone."""
    import sys

    from torch.ao.quantization import default_qconfig

    import qgraph

    torch.manual_seed(0)
    model = torch.jit.script(ConvStack().eval())
    x = torch.randn(2, 3, 8, 8)
    prepared = qgraph.prepare_jit(model, {"": default_qconfig})
    prepared(x)
    ours = qgraph.convert_jit(prepared)
    monkeypatch.setattr(
        sys.modules["passes.composite.lowering"],
        "freeze",
        lambda module, preserved: torch._C._freeze_module(module, preserved),
    )
    reference = qgraph.convert_jit(prepared)
    # Same ops reading the same constants and attributes; value names may differ
    # (constant pooling keeps whichever equal constant it met first).
    assert _structure(ours.graph) == _structure(reference.graph)
    _assert_same_outputs(ours, reference, x)


class DeadPrepack(nn.Module):
    """A prepack whose result is never used, before one that is (dead code, as tracing can leave)."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Linear(4, 3)
        self.used = nn.Linear(4, 2)

    def forward(self, x):
        dead_w = torch.quantize_per_tensor(self.unused.weight, 0.02, 0, torch.qint8)
        torch.ops.quantized.linear_prepack(dead_w, self.unused.bias)
        w = torch.quantize_per_tensor(self.used.weight, 0.02, 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(w, self.used.bias)
        x_q = torch.quantize_per_tensor(x, 0.05, 64, torch.quint8)
        return torch.ops.quantized.linear(x_q, packed, 0.2, 64).dequantize()


def test_dead_prepacks_take_no_attribute():
    torch.manual_seed(0)
    model = _scripted(DeadPrepack())
    x = torch.randn(3, 4)
    ours = _frozen_by_pass(model)
    names = [name for name, _ in torch._C._jit_debug_module_iterators(ours._c)["named_attributes_r"]]
    assert names == ["_packed_params_0"]
    _assert_same_outputs(ours, _frozen_by_reference(model), x)

"""qgraph.ir.replace_children: a submodule swapped for another in its place, or removed."""

import torch
from torch import nn
from torch.testing import FileCheck

from qgraph.ir import as_python, method_graph, replace_children


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(2, 2)
        self.unused = nn.ReLU()
        self.last = nn.Linear(2, 2)

    def forward(self, x):
        return self.last(self.first(x))


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = Inner()
        self.b = Inner()

    def forward(self, x):
        return self.b(self.a(x))


class Doubling(nn.Module):
    def forward(self, x):
        return 2 * x


def test_a_child_is_replaced_in_place_and_another_removed():
    torch.manual_seed(0)
    eager = Outer()
    root = torch.jit.script(eager)._c
    new = torch.jit.script(Doubling())._c
    result = as_python(replace_children(root, {"a.first": new, "a.unused": None}))
    assert [name for name, _ in result.a.named_children()] == ["first", "last"]
    assert [name for name, _ in result.b.named_children()] == ["first", "unused", "last"]
    FileCheck().check('Doubling = prim::GetAttr[name="first"]').run(method_graph(result.a._c))
    x = torch.randn(3, 2)
    with torch.no_grad():
        assert torch.equal(result(x), eager.b(eager.a.last(2 * x)))

"""Record chosen intermediate values of a TorchScript model while it runs, by rewriting a clone's graph.

``Taps(model)`` clones the model (fresh class types: the caller's model and
its compiled plans are untouched), inlines the clone's ``forward`` so every
op of every submodule is a node of one graph, and lets the caller pick
values of that graph (``taps.graph``) to record. Each picked value ``%v``
gets a copy stored in a ``Dict[int, Tensor]`` attribute of the clone::

    %v = aten::conv2d(%x, ...)
    %v.tap = aten::clone(%v, %none)
    aten::_set_item(%taps, %3, %v.tap)

so ``run(inputs)`` returns the model's output and ``{key: tensor}`` for
every picked value the run computed (a value in a branch not taken is
absent; a value in a loop body holds its last iteration). The copy keeps
what the value was when it was computed, whatever in-place op comes later.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch

from qgraph.ir import (
    CppModule,
    Graph,
    Node,
    Value,
    as_cpp,
    as_python,
    clone_module,
    insert_op,
    method_graph,
    register_attribute,
)

__all__ = ["Taps", "as_argument_tuple"]

_ATTRIBUTE = "_qgraph_taps"
_DICT_TYPE = torch._C.DictType(torch._C.IntType.get(), torch._C.TensorType.get())


def as_argument_tuple(inputs: Any) -> tuple:
    """One call's arguments: a tuple (or list) as it is, anything else as the only argument."""
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


class Taps:
    """A clone of ``model`` whose inlined ``forward`` records the values passed to ``tap``."""

    def __init__(self, model: Any):
        self.module: CppModule = clone_module(as_cpp(model))
        self.graph: Graph = method_graph(self.module, "forward")
        torch._C._jit_pass_inline(self.graph)
        register_attribute(self.module, _ATTRIBUTE, {}, _DICT_TYPE)
        self_value = next(self.graph.inputs())
        first = next(iter(self.graph.nodes()), self.graph.return_node())
        self._dict = insert_op(
            self.graph, "prim::GetAttr", [self_value], before=first, output_types=[_DICT_TYPE]
        ).output()
        self._dict.node().s_("name", _ATTRIBUTE)
        self._cleared = insert_op(self.graph, "aten::clear", [self._dict], after=self._dict.node(), n_outputs=0)
        self._python: torch.jit.ScriptModule | None = None
        self._keys: dict[Value, int] = {}

    def tap(self, value: Value) -> int:
        """Record ``value`` (a Tensor of ``self.graph``) on every run; returns its key."""
        if value in self._keys:
            return self._keys[value]
        if self._python is not None:
            raise RuntimeError("values are tapped before the first run")
        if value.type().kind() != "TensorType":
            raise TypeError(f"only Tensor values can be tapped, %{value.debugName()} is {value.type()}")
        key = len(self._keys)
        self._keys[value] = key
        producer = value.node()
        if producer.kind() != "prim::Param":
            copy = insert_op(self.graph, "aten::clone", [value, None], after=producer)
        elif producer.owningBlock().owningNode() is None:
            # Graph inputs are recorded after the dictionary is fetched and cleared.
            copy = insert_op(self.graph, "aten::clone", [value, None], after=self._cleared)
        else:
            copy = insert_op(self.graph, "aten::clone", [value, None], before=_first_node(producer))
        insert_op(self.graph, "aten::_set_item", [self._dict, key, copy.output()], after=copy, n_outputs=0)
        return key

    def run(self, inputs: Sequence[Any]) -> tuple[Any, dict[int, torch.Tensor]]:
        """Run ``forward(*inputs)``; returns its output and the recorded values by key."""
        if self._python is None:
            torch._C._jit_pass_lint(self.graph)
            self._python = as_python(self.module)
        # A debugging run: graph optimization would cost more than it saves.
        with torch.no_grad(), torch.jit.optimized_execution(False):
            output = self._python(*inputs)
        return output, dict(cast(Any, self.module).getattr(_ATTRIBUTE))


def _first_node(param: Node) -> Node:
    block = param.owningBlock()
    return next(iter(block.nodes()), block.returnNode())

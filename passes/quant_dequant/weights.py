"""Weight observers run on the weights themselves, which need no calibration data.

Dynamic quantization observes every weight here. Static calibration runs
weight observers as it runs the model, but not the weights of a branch
calibration never took (an ``if self.training:`` auxiliary head, an
``if flag:`` left False) or of a model never calibrated; such an observer
observes its weight here, as eager convert does. A weight observer's call
and what feeds it become a TorchScript function of ``self``, run on the
module.
"""

from __future__ import annotations

from typing import Any

import torch

from passes.quant_dequant.calls import invoked_methods, is_weight_anywhere
from qgraph.ir import TENSOR, CppModule, Node, Value, clone_node, inputs_of, method_graph, outputs_of, stack_order
from qgraph.quant import observer_state
from qgraph.quant.observers import observer_name

__all__ = ["WeightObservers"]


class WeightObservers:
    """Runs the weight observers of a module tree; each weight's function is built once."""

    def __init__(self) -> None:
        self.functions: dict[Value, Any] = {}

    def run(self, module: CppModule, method: str, only_unseen: bool = False) -> None:
        """Run weight observers on their weights (with ``only_unseen``, those that saw no data).

        Static calibration runs weight observers as it runs the model, but
        not the weights of a branch calibration never took (an
        ``if self.training:`` auxiliary head, an ``if flag:`` left False) or
        of a model never calibrated. Weights are known without data, so such
        an observer observes its weight here, as eager convert does.
        """
        for callee, name in invoked_methods(module, method):
            self.run(callee, name, only_unseen)
        graph = method_graph(module, method)
        self_value = next(graph.inputs())
        weights = [
            v
            for node in stack_order(graph)
            for v in outputs_of(node)
            if v.type().isSubtypeOf(TENSOR) and observer_name(v) is not None and is_weight_anywhere(module, v)
        ]
        for value in weights:
            if only_unseen and not observer_state.saw_no_data(module.getattr(str(observer_name(value)))):
                continue
            function = self.functions.get(value)
            if function is None:
                try:
                    function = _subgraph_function(self_value, value)
                except _NotFromAttributes:
                    if only_unseen:
                        # Computed from the inputs: only calibration can observe it.
                        continue
                    raise
                self.functions[value] = function
            function(module)


class _NotFromAttributes(RuntimeError):
    """A weight that is computed from a method's inputs, not only from module attributes."""


def _subgraph_function(self_value: Value, value: Value) -> Any:
    """A TorchScript function of ``self`` recomputing ``value`` (a weight observer call and what feeds it)."""
    nodes: list[Node] = []
    seen: set[Node] = set()

    def collect(v: Value) -> None:
        node = v.node()
        if node in seen:
            return
        seen.add(node)
        for input_value in inputs_of(node):
            if input_value.node().kind() == "prim::Param":
                if input_value != self_value:
                    raise _NotFromAttributes(
                        f"the weight observed as %{value.debugName()} depends on %{input_value.debugName()}, "
                        "not only on module attributes"
                    )
                continue
            collect(input_value)
        nodes.append(node)

    collect(value)
    sub = torch._C.Graph()
    remap = {self_value: sub.addInput()}
    remap[self_value].setType(self_value.type())
    for node in nodes:
        clone = clone_node(sub, node, lambda v: remap[v])
        sub.insertNode(clone)
        for old, new in zip(outputs_of(node), outputs_of(clone)):
            remap[old] = new
    sub.registerOutput(remap[value])
    return torch._C._create_function_from_graph("observer_subgraph", sub)

"""Methods and weights as the reference's insert_quant_dequant sees them.

``invoked_methods`` lists the methods a method calls on submodules (or on
``self``), in the reference's visit order, observers left out;
``is_weight_anywhere`` tells a weight from an activation also when the
value is passed into a method that uses it.
"""

from __future__ import annotations

from qgraph.ir import CppModule, Value, inputs_of, method_graph, stack_order, submodule_for_getattr
from qgraph.quant.observed_values import is_weight
from qgraph.quant.observers import OBSERVER_PREFIX

__all__ = ["invoked_methods", "is_weight_anywhere"]


def invoked_methods(module: CppModule, method: str) -> list[tuple[CppModule, str]]:
    """(module, method) of every ``prim::CallMethod`` of a submodule (or self) that is not an observer."""
    graph = method_graph(module, method)
    self_value = next(graph.inputs())
    invoked = []
    for node in stack_order(graph, kinds=("prim::CallMethod",)):
        receiver = node.inputsAt(0)
        if receiver == self_value:
            invoked.append((module, node.s("name")))
        elif receiver.node().kind() == "prim::GetAttr" and OBSERVER_PREFIX not in receiver.node().s("name"):
            target = submodule_for_getattr(module, receiver)
            if target is not None:
                invoked.append((target, node.s("name")))
    return invoked


def is_weight_anywhere(module: CppModule, value: Value) -> bool:
    """Whether ``value`` is used as a weight, here or inside the methods it is passed to."""
    if is_weight(value):
        return True
    result = None
    for use in value.uses():
        if use.user.kind() != "prim::CallMethod":
            continue
        callee = submodule_for_getattr(module, use.user.inputsAt(0))
        if callee is None:
            return False
        param = inputs_of(method_graph(callee, use.user.s("name")))[use.offset]
        found = is_weight_anywhere(callee, param)
        if result is not None and found != result:
            raise RuntimeError(
                f"%{value.debugName()} is passed to methods that use it both as a weight and as an activation"
            )
        result = found
    return bool(result)

"""Observers into the graphs, as an ``ObserverPlacement`` decided them.

Each observed value ``%v`` of a block gets a fresh observer submodule
``_observer_N`` of the module that owns the graph (``N`` counts up over the
whole tree, in the placement's order), read and called right after ``%v``;
later uses of ``%v`` read the observer's output (the graph shape is in
``insert_observers.py``). Instances of one class type share the graph, so
they get the same names, each its own observer copies.
"""

from __future__ import annotations

import copy

from passes.observe.analysis import ObserverAnalysis
from passes.observe.placement import ObserveBlock, ObserverPlacement, Revisit
from qgraph.ir import Block, CppModule, Graph, Value, insert_getattr, register_submodule
from qgraph.quant.observers import OBSERVER_PREFIX

__all__ = ["insert_placed_observers"]


class _Insertion:
    def __init__(self, analysis: ObserverAnalysis):
        self.analysis = analysis
        self.next_id = 0
        self.inserted: dict[Block, list[tuple[str, CppModule]]] = {}

    def observe_block(self, step: ObserveBlock) -> None:
        if step.values and step.in_function:
            value = step.values[0][0]
            raise RuntimeError(
                f"value %{value.debugName()} inside a TorchScript function called from "
                f"{step.module._type().qualified_name()} needs an observer; observers can only be "
                "inserted in module methods (make the function a method or a submodule)"
            )
        self.inserted[step.block] = [self.observe(value, step.graph, step.module, t) for value, t in step.values]

    def revisit(self, step: Revisit) -> None:
        for name, observer in self.inserted[step.block]:
            step.module.setattr(name, copy.deepcopy(observer))

    def observe(self, value: Value, graph: Graph, module: CppModule, template: CppModule) -> tuple[str, CppModule]:
        observer = copy.deepcopy(template)
        name = f"{OBSERVER_PREFIX}{self.next_id}"
        self.next_id += 1
        while module.hasattr(name):
            name = f"{OBSERVER_PREFIX}{self.next_id}"
            self.next_id += 1
        instances = self.analysis.instances_of(module)
        register_submodule(module, name, observer)
        # The slot now exists on every instance of the class type. Instances
        # that forward never calls (a residual block's unused FloatFunctional)
        # are never visited, and an empty module slot crashes the process as
        # soon as anything lists the submodules: each gets its own observer.
        for instance in instances:
            instance.setattr(name, copy.deepcopy(template))
        module.setattr(name, observer)

        self_value = next(graph.inputs())
        get = insert_getattr(graph, self_value, name, observer._type(), after=value.node(), debug_name=name)
        call = graph.create("prim::CallMethod", [get.output(), value], 1)
        call.s_("name", "forward")
        call.insertAfter(get)
        call.output().copyMetadata(value)
        value.replaceAllUsesWith(call.output())
        call.replaceInput(1, value)
        return name, observer


def insert_placed_observers(placement: ObserverPlacement) -> None:
    """Carry out ``placement``'s steps on the module tree it was decided for."""
    insertion = _Insertion(placement.analysis)
    for step in placement.steps:
        if isinstance(step, Revisit):
            insertion.revisit(step)
        else:
            insertion.observe_block(step)

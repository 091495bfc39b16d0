"""What observer placement needs to know of every value, read once from the whole module call graph.

One walk per distinct method graph (callees first, shared graphs once) and
one per instance for the call boundaries:

- ``delayed``: values whose observation moves to the relu after them
  (``delayed.py``);
- ``observer_for_value``: the observer a value would get where it is
  produced or read, from the qconfig of the module owning its graph
  (weights the weight observer, biases none);
- ``pass_through``: the values that must all be observed for a value to
  count as observed without an observer of its own (general ops, ``if``,
  tuples and lists);
- ``boundary``: what a value is on the other side of a call or an ``if``
  (a call output is the callee's returned value, a call argument the
  callee's parameter), so ``observer_for`` can follow a value across.

Nothing here changes a graph.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.ao.quantization import QConfig

from passes.observe.delayed import delayed_observations
from qgraph.ir import (
    CppModule,
    Graph,
    Node,
    Value,
    call_graph,
    callees_first,
    getattr_path,
    inputs_of,
    instances_by_type,
    method_graph,
    nested_blocks,
    outputs_of,
    submodule_for_getattr,
    walk,
)
from qgraph.quant import observed_values as rules
from qgraph.quant.observers import is_embedding_bag_placeholder, observer_dtype
from qgraph.quant.quant_type import QuantType

__all__ = ["ObserverAnalysis"]


class ObserverAnalysis:
    """The facts of one module tree that observer placement reads; see the module docstring."""

    def __init__(
        self,
        root: CppModule,
        qconfigs: dict[str, QConfig | None],
        quant_type: QuantType,
        method: str,
        op_qconfigs: dict[Node, QConfig | None] | None = None,
    ):
        self.root = root
        self.qconfigs = qconfigs
        # Ops whose qconfig is not their module's (QConfigMapping op object types and order entries).
        self.op_qconfigs = {} if op_qconfigs is None else op_qconfigs
        self.quant_type = quant_type
        self.delayed: dict[Value, Value] = {}
        self.observer_for_value: dict[Value, CppModule] = {}
        # call-site value -> callee values (the callee's output first, then inputs of consumers)
        self.boundary: dict[Value, list[Value]] = {}
        self.pass_through: dict[Value, list[Value]] = {}
        self.instances = instances_by_type(root)
        self._keep: list[Any] = []  # graph wrappers used as keys stay alive
        calls = call_graph(root, method)
        analysed_functions: set[Graph] = set()
        for key in callees_first(calls):
            data = calls.nodes[key]
            graph = data["graph"]
            self._keep.append(graph)
            self.delayed.update(delayed_observations(graph))
            qconfig = self.qconfigs.get(data["instances"][0]) if data["instances"] else None
            if qconfig is not None or self.op_qconfigs:
                self._fill_observers(graph, qconfig)
            self._fill_pass_through(graph, analysed_functions)
        for _, module, name in self._instance_methods(method):
            self._fill_boundary(module, method_graph(module, name))

    # --- queries ------------------------------------------------------------------------

    def observer_for(self, value: Value, visiting: frozenset = frozenset()) -> CppModule | None:
        """The observer ``value`` gets, here or across the calls and ``if`` s it crosses; None if none."""
        found = self.observer_for_value.get(value)
        if found is not None:
            return found
        for target in self.boundary.get(value, ()):
            if target in visiting:
                continue
            found = self.observer_for(target, visiting | {value})
            if found is not None:
                return found
        return None

    def callee(self, module: CppModule, node: Node) -> tuple[Graph | None, int, CppModule | None]:
        """(graph, offset of its first parameter among the call's inputs, owner) of a call; graph None if unknown.

        A method's owner is the called submodule; a function runs in the
        caller's module.
        """
        if node.kind() == "prim::CallMethod":
            target = submodule_for_getattr(module, node.inputsAt(0))
            if target is None:
                return None, 0, None
            graph = method_graph(target, node.s("name"))
            self._keep.append(graph)
            return graph, 0, target
        function = rules.function_graph(node)
        if function is not None:
            self._keep.append(function)
        return function, 1, module

    def instances_of(self, module: CppModule) -> list[CppModule]:
        """Every instance of ``module``'s class type in the tree, as it was before observers went in."""
        return self.instances.get(module._type().qualified_name(), [])

    # --- the walks ------------------------------------------------------------------------

    def _instance_methods(self, method: str) -> Iterator[tuple[str, CppModule, str]]:
        """(path, instance, method) for every method call reachable from the root, each instance once."""
        seen = set()
        # Instances of one class share its graphs: walk each (type, method) once.
        calls_in: dict[tuple[str, str], list[Node]] = {}
        stack = [("", self.root, method)]
        while stack:
            path, module, name = stack.pop()
            if (path, name) in seen:
                continue
            seen.add((path, name))
            yield path, module, name
            key = (module._type().qualified_name(), name)
            if key not in calls_in:
                calls_in[key] = [n for n in walk(method_graph(module, name)) if n.kind() == "prim::CallMethod"]
            for node in calls_in[key]:
                target = submodule_for_getattr(module, node.inputsAt(0))
                if target is not None:
                    sub_path = ".".join(p for p in [path, *(getattr_path(node.inputsAt(0)) or [])] if p)
                    stack.append((sub_path, target, node.s("name")))

    def _fill_observers(self, graph: Graph, qconfig: QConfig | None) -> None:
        for value in inputs_of(graph):
            observer = self._observer_needed(value, qconfig)
            if observer is not None:
                self.observer_for_value[value] = observer
        for node in walk(graph):
            values = outputs_of(node)
            if node.kind() == "prim::Loop":
                values += rules.loop_carried_params(node)
            for value in values:
                observer = self._observer_needed(value, qconfig)
                if observer is not None:
                    self.observer_for_value[value] = observer

    def _qconfig_of(self, node: Node, module_qconfig: QConfig | None) -> QConfig | None:
        """The qconfig of one op: its own (a QConfigMapping op entry), else its module's."""
        return self.op_qconfigs.get(node, module_qconfig) if self.op_qconfigs else module_qconfig

    @staticmethod
    def _observer_module(value: Value, qconfig: QConfig) -> CppModule:
        return qconfig.weight if rules.is_weight(value) else qconfig.activation

    def _observer_needed(self, value: Value, module_qconfig: QConfig | None) -> CppModule | None:
        """The observer ``value`` needs in its graph, or None.

        The qconfig that observes it is its producer's when the producer asks
        for an observer, else that of its first reader that does; an op's
        qconfig is its module's unless a QConfigMapping names the op.
        """
        if rules.is_bias(value) or not rules.is_tensor_or_tensor_list(value) or rules.is_embedding_bag_float_arg(value):
            return None
        node = value.node()
        producer_qconfig = self._qconfig_of(node, module_qconfig)
        if (
            self.quant_type == QuantType.STATIC
            and producer_qconfig is not None
            and not rules.is_weight_only(node)
            and (rules.is_quantizable(node, QuantType.STATIC) or rules.is_propagating(node))
        ):
            return self._observer_module(value, producer_qconfig)
        readers = [self._qconfig_of(use.user, module_qconfig) for use in value.uses()]
        qconfig = next(
            (
                reader_qconfig
                for use, reader_qconfig in zip(value.uses(), readers)
                if reader_qconfig is not None and rules.is_quantizable_use(use.user, use.offset, self.quant_type)
            ),
            None,
        )
        if self.quant_type == QuantType.DYNAMIC:
            weight_only_qconfig = next(
                (q for use, q in zip(value.uses(), readers) if q is not None and rules.is_weight_only(use.user)), None
            )
            # Weight-only quantization needs no calibration, so the dynamic API
            # gives an embedding_bag what the static API gives when its qconfig asks for it.
            if (
                weight_only_qconfig is not None
                and rules.is_weight_only_weight(value)
                and is_embedding_bag_placeholder(weight_only_qconfig.weight)
            ):
                return weight_only_qconfig.weight
            # fp16 dynamic quantization converts weights only.
            if (
                qconfig is not None
                and not rules.is_weight(value)
                and observer_dtype(self._observer_module(value, qconfig)) == torch.float16
            ):
                return None
        return None if qconfig is None else self._observer_module(value, qconfig)

    def _fill_pass_through(self, graph: Graph, analysed_functions: set) -> None:
        pending = [graph]
        while pending:
            current = pending.pop()
            for node in walk(current):
                if rules.is_user_function_call(node):
                    callee = rules.function_graph(node)
                    if callee is not None and callee not in analysed_functions:
                        analysed_functions.add(callee)
                        self._keep.append(callee)
                        pending.append(callee)
                for value in outputs_of(node):
                    inputs = rules.pass_through_inputs(value)
                    if inputs:
                        self.pass_through[value] = inputs

    def _fill_boundary(self, module: CppModule, graph: Graph) -> None:
        for node in walk(graph):
            kind = node.kind()
            if kind == "prim::CallMethod" or rules.is_user_function_call(node):
                callee_graph, offset, _ = self.callee(module, node)
                if callee_graph is None:
                    continue
                for out, ret in zip(outputs_of(node), outputs_of(callee_graph)):
                    self._link(out, ret)
                for i, param in enumerate(inputs_of(callee_graph)):
                    self._link(node.inputsAt(i + offset), param)
            elif kind == "prim::If":
                for block in nested_blocks(node):
                    for out, block_out in zip(outputs_of(node), outputs_of(block)):
                        self._link(out, block_out)

    def _link(self, caller_value: Value, callee_value: Value) -> None:
        targets = self.boundary.setdefault(caller_value, [])
        if callee_value not in targets:
            targets.append(callee_value)

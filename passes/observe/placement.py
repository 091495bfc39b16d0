"""Where observers go: a walk over the method and what it calls that decides, and changes nothing.

The walk follows calls into their graphs with the caller's knowledge of
which arguments arrive observed, so each block is visited once per call
site; the first visit of a block decides its observers (``ObserveBlock``,
in the order their names are handed out), later visits of the same graph
through another instance copy them (``Revisit``). ``if`` nodes whose
branches end observed differently are listed in ``inconsistent_ifs``
(``branches.py`` moves their continuations into the branches).

Per block, a value gets the observer the analysis found for it when it is
not observed already: explicitly, through the general ops it passes
through (``ObserverAnalysis.pass_through``), or by the callee that returns
it. Values at a call boundary are decided by the caller, so that a callee
shared by many instances is observed where each call happens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from passes.observe.analysis import ObserverAnalysis
from qgraph.ir import Block, CppModule, Graph, Node, Value, inputs_of, method_graph, nested_blocks, outputs_of
from qgraph.quant import observed_values as rules
from qgraph.quant.ops import PROPAGATE_BINARY_ATEN, PROPAGATE_SINGLE_INPUT_ATEN
from qgraph.quant.quant_type import QuantType

__all__ = ["ObserveBlock", "Revisit", "ObserverPlacement"]


@dataclass
class ObserveBlock:
    """The observers of a block, decided at its first visit: (value, observer template) in naming order."""

    block: Block
    graph: Graph
    module: CppModule
    values: list[tuple[Value, CppModule]]
    in_function: bool


@dataclass
class Revisit:
    """A block seen again through another instance of its class type, which gets its own observers."""

    block: Block
    module: CppModule


@dataclass(frozen=True)
class _Frame:
    """Where a block belongs: the graph and the module that owns it, and whether it is a function's."""

    graph: Graph
    module: CppModule
    in_function: bool = False


@dataclass
class _Boundary:
    """What a block tells its caller: observers wanted for its inputs and outputs, outputs observed inside."""

    input_observers: list[CppModule | None]
    output_observers: list[CppModule | None]
    observed_outputs: list[int]


_ENTRY, _NESTED, _LOOP_BODY = "entry", "nested", "loop body"


class ObserverPlacement:
    """The decisions of one walk from ``method_name``; ``steps`` in the order they are carried out."""

    def __init__(self, analysis: ObserverAnalysis, method_name: str):
        self.analysis = analysis
        self.steps: list[ObserveBlock | Revisit] = []
        self.inconsistent_ifs: list[tuple[Node, Graph]] = []
        # Values observed by an observer of their own (or by the callee returning them).
        self.explicit: set[Value] = set()
        # Loop-carried parameters observed at the start of the body, for every iteration.
        self.loop_param_observers: dict[Value, CppModule] = {}
        self._visited: set[Block] = set()
        self._keep: list[Any] = []  # block wrappers used as keys stay alive
        graph = method_graph(analysis.root, method_name)
        _BlockWalk(self, graph.block(), _Frame(graph, analysis.root), set(), _ENTRY).run()


class _BlockWalk:
    """One visit of one block; ``observed`` is shared with the enclosing walk for ``if`` and loop blocks."""

    def __init__(self, placement: ObserverPlacement, block: Block, frame: _Frame, observed: set, role: str):
        self.placement, self.analysis = placement, placement.analysis
        self.block, self.frame, self.observed, self.role = block, frame, observed, role
        self.boundary: set[Value] = set()
        self.to_observe: dict[Value, CppModule] = {}

    def run(self) -> _Boundary:
        placement, block = self.placement, self.block
        result = _Boundary([], [], [])
        if self.role != _ENTRY:
            self.boundary.update(inputs_of(self.frame.graph))
            self.boundary.update(outputs_of(self.frame.graph))
            if self.role != _LOOP_BODY:
                self.boundary.update(outputs_of(block))
            result.input_observers = [self.observer_for(v) for v in inputs_of(block)]
            result.output_observers = [None if v in self.observed else self.observer_for(v) for v in outputs_of(block)]
        placement._keep.append(block)
        first_visit = block not in placement._visited
        if not first_visit:
            # Another instance of the same class type: its observers have the
            # same names, each instance its own copies.
            placement.steps.append(Revisit(block, self.frame.module))
        for value in inputs_of(block):
            if value not in self.boundary and value not in self.to_observe and value not in self.observed:
                observer = self.observer_for(value)
                if observer is not None:
                    self.record(value, observer)
        for node in list(block.nodes()):
            kind = node.kind()
            if kind == "prim::CallMethod" or rules.is_user_function_call(node):
                if not self.call(node):
                    continue
            elif kind == "prim::If":
                self.if_(node)
            elif kind == "prim::Loop":
                self.loop(node)
            for value in outputs_of(node):
                self.propagate(value)
                if value not in self.boundary and value not in self.observed:
                    observer = self.observer_for(value)
                    if observer is not None and self.should_observe(node):
                        self.record(value, observer)
        result.observed_outputs = [i for i, v in enumerate(outputs_of(block)) if v in self.observed]
        if first_visit:
            placement._visited.add(block)
            values = list(self.to_observe.items())
            placement.steps.append(
                ObserveBlock(block, self.frame.graph, self.frame.module, values, self.frame.in_function)
            )
        return result

    # --- one value ------------------------------------------------------------------------

    def observer_for(self, value: Value) -> CppModule | None:
        override = self.placement.loop_param_observers.get(value)
        return override if override is not None else self.analysis.observer_for(value)

    def record(self, value: Value, observer: CppModule) -> None:
        target = self.analysis.delayed.get(value, value)
        if not rules.is_tensor_or_tensor_list(target):
            # An Optional[Tensor] (an `if self.training:` branch that returns
            # None in eval mode) can be None at run time: observers take a Tensor.
            return
        self.to_observe[target] = observer
        self.observed.add(target)
        self.placement.explicit.add(target)

    def propagate(self, value: Value) -> None:
        inputs = self.analysis.pass_through.get(value)
        if inputs and all(v in self.observed for v in inputs):
            self.observed.add(value)

    def should_observe(self, node: Node) -> bool:
        quant_type = self.analysis.quant_type
        for out in outputs_of(node):
            if any(rules.is_quantizable_use(u.user, u.offset, quant_type) for u in out.uses()):
                return True
        name = rules.aten_name(node)
        if name in PROPAGATE_SINGLE_INPUT_ATEN:
            return node.inputsAt(0) in self.observed
        if name in PROPAGATE_BINARY_ATEN:
            return node.inputsAt(0) in self.observed and node.inputsAt(1) in self.observed
        return True

    def _record_unobserved(self, value: Value, wanted: CppModule | None) -> None:
        if wanted is not None and value not in self.boundary and value not in self.observed:
            self.record(value, wanted)

    # --- nodes with graphs or blocks ------------------------------------------------------------

    def call(self, node: Node) -> bool:
        """Walk the callee with what arrives observed; False for a call the walk cannot follow."""
        callee_graph, offset, owner = self.analysis.callee(self.frame.module, node)
        if callee_graph is None or owner is None:
            return node.kind() != "prim::CallMethod"
        in_function = self.frame.in_function or node.kind() != "prim::CallMethod"
        params = inputs_of(callee_graph)
        arrived = {param for i, param in enumerate(params) if node.inputsAt(i + offset) in self.observed}
        walk = _BlockWalk(
            self.placement, callee_graph.block(), _Frame(callee_graph, owner, in_function), arrived, _NESTED
        )
        callee = walk.run()
        outputs = outputs_of(node)
        for index in callee.observed_outputs:
            self.observed.add(outputs[index])
            self.placement.explicit.add(outputs[index])
        for i in range(len(params)):
            self._record_unobserved(node.inputsAt(i + offset), callee.input_observers[i])
        for value, wanted in zip(outputs, callee.output_observers):
            self._record_unobserved(value, wanted)
        return True

    def if_(self, node: Node) -> None:
        # Each branch is observed as its own ops dictate. An output counts as
        # observed only when every branch that can return hands back an
        # observed value; otherwise it is a float value after the `if`, and
        # gets an observer of its own there when a consumer needs one, so both
        # branches reach that consumer quantized with the same qparams. (The
        # reference raises "branches for `if` should return values that are
        # observed consistently" instead.)
        agreed: list[bool] | None = None
        states = []
        for block in nested_blocks(node):
            if rules.always_raises(block):
                continue
            branch = _BlockWalk(self.placement, block, self.frame, self.observed, _NESTED).run()
            block_outputs = outputs_of(block)
            for value, wanted in zip(block_outputs, branch.output_observers):
                self._record_unobserved(value, wanted)
            for index in branch.observed_outputs:
                self.observed.add(block_outputs[index])
            state = [v in self.observed for v in block_outputs]
            states.append(state)
            agreed = state if agreed is None else [a and b for a, b in zip(agreed, state)]
        if not self.frame.in_function and any(state != states[0] for state in states):
            self.placement.inconsistent_ifs.append((node, self.frame.graph))
        if node.outputsSize() == 1 and agreed == [False]:
            self._observe_branch_results(node)
            agreed = [node.output() in self.observed]
        for value, is_observed in zip(outputs_of(node), agreed or []):
            if is_observed:
                self.observed.add(value)

    def _observe_branch_results(self, node: Node) -> None:
        """Observe, inside its branch, each unobserved result of a one-output ``if`` that some branch observes.

        Each branch then hands back a value quantized with its own range, as
        when both branches end in a conv; a result defined outside its branch
        leaves the ``if`` output to be observed after the ``if``.
        """
        blocks = [b for b in nested_blocks(node) if not rules.always_raises(b)]
        results = [next(b.outputs()) for b in blocks]
        wanted = self.observer_for(node.output())
        if wanted is None or not any(v in self.observed for v in results):
            return
        missing = [(b, v) for b, v in zip(blocks, results) if v not in self.observed]
        if not all(rules.is_defined_in(v, b) and rules.is_tensor_or_tensor_list(v) for b, v in missing):
            return
        for _, value in missing:
            self.record(value, wanted)
        self.observed.add(node.output())

    def loop(self, node: Node) -> None:
        """Observe a ``prim::Loop`` body and decide, per carried value, how it crosses iterations.

        Static mode, a carried parameter that a quantizable op reads (or that
        an add/mul/cat combines with a back-edge value wanting an observer):

        - carried quantized, when the value entering the loop and the value
          the body hands back can both be observed: each is observed where it
          is produced (the entry before the loop, the back edge in the body,
          each with an observer of its own, since their ranges can differ a
          lot — a raw input versus a relu output), the parameter and the loop
          output count as observed, and convert lets the loop carry the
          quantized tensors (``passes.quant_dequant.loops``);
        - otherwise the parameter is observed at the start of the body, so one
          observer sees the value on entry and on every back edge, and the
          carried value stays float between iterations.

        Dynamic mode observes parameters at the start of the body.
        """
        analysis, placement = self.analysis, self.placement
        body = nested_blocks(node)[0]
        entries = inputs_of(node)[2:]
        carried = []
        for param, entry, back in zip(rules.loop_carried_params(node), entries, rules.loop_back_edges(node)):
            if analysis.quant_type != QuantType.STATIC or not rules.is_tensor_or_tensor_list(param):
                continue
            back_inside = back != param and rules.is_defined_in(back, body)
            wanted = self.observer_for(param)
            if wanted is None and back_inside and any(rules.is_propagating(u.user) for u in param.uses()):
                wanted = self.observer_for(back)
            if wanted is None:
                continue
            entry_ok = entry in self.observed or entry not in self.boundary
            back_ok = back == param or back_inside or back in placement.explicit
            if not (entry_ok and back_ok and param.type().isSubtypeOf(torch._C.TensorType.get())):
                placement.loop_param_observers[param] = wanted
                continue
            if entry not in self.observed:
                self.record(entry, wanted)
            self.observed.add(param)
            carried.append((param, back, wanted))
        _BlockWalk(placement, body, self.frame, self.observed, _LOOP_BODY).run()
        for param, back, wanted in carried:
            if back != param and back not in placement.explicit:
                back_observer = self.observer_for(back)
                self.record(back, back_observer if back_observer is not None else wanted)
        for param, _, _ in carried:
            self.observed.add(node.outputsAt(param.offset() - 1))

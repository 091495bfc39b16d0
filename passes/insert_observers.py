"""Insert observer modules after every value that quantization will need qparams for.

Takes a script module (Conv-BN already folded, if wanted: ``fold_conv_bn``)
and a ``qconfig_dict``; first cleans up the graphs it observes, as PyTorch's
pass of the same name does (``passes._observer_preprocessing``: functional
linear swapped, fork/wait inlined, linear fused, traced
``aten::_convolution`` canonicalised, lists built by ``append`` folded into
their construct). Leaves, after each observed value ``%v`` of a method graph,
a call of a fresh observer submodule ``_observer_N`` of the module that owns
the graph; later uses of ``%v`` read the observer's output::

    %x = prim::CallMethod[name="forward"](%conv, %input)
    %y = aten::flatten(%x, %1, %2)

becomes::

    %x = prim::CallMethod[name="forward"](%conv, %input)
    %_observer_3 : MinMaxObserver = prim::GetAttr[name="_observer_3"](%self)
    %x.1 = prim::CallMethod[name="forward"](%_observer_3, %x)
    %y = aten::flatten(%x.1, %1, %2)

and ``flatten``'s output gets no observer: observation passes through
general ops.

The rules are those of PyTorch's own graph-mode prepare (the reference):

- a Tensor (or List[Tensor]) is observed when a quantizable op produces it
  (static mode; also cat/add/mul when their inputs are observed) or a
  quantizable op consumes it; conv/linear/embedding_bag weights get the
  qconfig's weight observer, biases nothing (``_observed_values``);
- ``{linear, conv, batch_norm, add, mul} -> relu``: the relu output is
  observed instead of the value in between (``DELAYED_OBSERVATION``);
- values crossing a method call are observed at the call site, in the
  caller's graph: a callee's graph is shared by every instance of its class
  type, so an observer there would be shared too; the observers are found by
  mapping call-site values to the callee's inputs/outputs;
- a value already observed (an observer output, or an output of a general
  op whose inputs are observed, or a call output the callee observed, or an
  ``if`` output observed in every branch that does not raise) gets no
  second observer;
- instances of one class type get the same observer names; each gets its
  own observer instances.

Where qgraph goes past the reference:

- dynamic mode observes an embedding_bag weight whose qconfig's weight
  observer is a ``PlaceholderObserver`` naming an embedding_bag kernel
  (``custom_op_name="embedding_bag_byte"`` / ``"embedding_bag_4bit"``):
  weight-only quantization needs no calibration, so the dynamic API gives
  the bag what the static API gives (the reference's dynamic API leaves it
  float). Under any other qconfig the bag stays float, as in the reference.
- ``if`` branches observed differently (a conv in one, a float op such as
  ``exp`` or an op with its own observer such as ``relu6`` in the other):
  each branch is observed as its own ops dictate; when the ``if`` result
  wants an observer (a consumer quantizes it, or a branch's quantizable
  producer observes it), a branch whose result is not observed gets an
  observer of its own at the end of the branch, so each branch hands back
  a value quantized with its own range (as two convs would). A result
  defined outside its branch leaves the ``if`` output unobserved, to be
  observed after the ``if``. The ops after such an ``if`` in its block
  that read its result move into each branch first (one copy per branch),
  so they too are observed per side: a head conv after ``conv`` / ``exp``
  branches gets one output range per side instead of one widened by the
  other side. A dry run of the analysis finds those ifs; ifs whose
  branches agree stay as they are (the reference's bits), and a graph
  grows by at most its own size (a thousand nodes at least). The
  reference raises "branches for `if` should return values that are
  observed consistently".
- ``prim::Loop`` bodies are observed like straight-line code (the reference
  only warns and leaves them float). A loop-carried parameter that a
  quantizable op reads, or that an add/mul/cat combines with a back-edge
  value wanting an observer, is observed at the start of the body: one
  observer sees the value on entry and on every back edge. A back-edge
  value produced in the body that wants an observer uses that same
  observer submodule, so quantizing it at the end of an iteration and
  requantizing it at the start of the next agree exactly. Carried values
  stay float between iterations; loop outputs count as unobserved and get
  an observer after the loop when a consumer wants one::

      %y = prim::Loop(%n, %true, %x)
        block0(%i : int, %x.2 : Tensor):
          %_observer_1 = prim::GetAttr[name="_observer_1"](%self)
          %x.3 = prim::CallMethod[name="forward"](%_observer_1, %x.2)
          %c = prim::CallMethod[name="forward"](%conv, %x.3)
          ... (%c observed by _observer_2)
          %s = aten::add(%c.1, %x.3, %one)
          %_observer_1.1 = prim::GetAttr[name="_observer_1"](%self)
          %s.1 = prim::CallMethod[name="forward"](%_observer_1.1, %s)
          -> (%true, %s.1)

- A traced call of a ReLU module whose result was unused returns None; it
  never takes the observation of the conv/add/mul before it.

A value that ops under different qconfigs read (a model input, a float op's
output, a submodule's output) is observed once, where it is produced, with
the first observer found in this order: the one its producer asks for (a
quantizable op of the graph, under the qconfig of the module owning the
graph; a submodule call, under that submodule's qconfig); the one an op of
the owning graph itself asks for by reading it (same qconfig); the one the
first submodule call, in program order, asks for by reading it (under the
qconfig of that submodule; calls whose qconfig is None ask for nothing).
Every quantized consumer reads that one quantized value (each keeps its own
weight observer, per-tensor or per-channel); a consumer whose qconfig is
None reads the dequantized float value and runs in float. The reference does
the same when one side is None and raises "Expecting all values in the graph
only configured with one observer" when two qconfigs would observe it.

Cost: one walk per method graph for the analysis (callees first, shared graphs
once) and one walk per call site for the insertion, since whether a callee's
inputs arrive observed depends on the caller.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import torch
from torch.ao.quantization import QConfig
from torch.ao.quantization.quant_type import QuantType

from passes import _observed_values as rules
from passes._observer_preprocessing import preprocess
from qgraph.ir.callgraph import call_graph, callees_first
from qgraph.ir.clone import clone_module, unshare_types
from qgraph.ir.graph import Block, Graph, Node, NodeIndex, Value, inputs_of, is_alive, nested_blocks, outputs_of, walk
from qgraph.ir.module import (
    CppModule,
    as_cpp,
    as_python,
    getattr_path,
    instances_by_type,
    method_graph,
    register_submodule,
    resolve_path,
)
from qgraph.pattern import Match, compile_pattern, find_matches
from qgraph.qconfig import is_scripted_qconfig, qconfig_paths_needing_own_type, resolve_qconfigs, script_qconfig
from qgraph.qconfig_mapping import MappingResolver, OpPosition, is_qconfig_mapping, map_qconfigs

__all__ = ["insert_observers", "insert_observers_in_place", "DELAYED_OBSERVATION", "parse_quant_type"]

_MANGLE = re.compile(r"\.___torch_mangle_\d+")


def _module_type_is(name: str, *class_names: str):
    expected = {f"__torch__.{c}" for c in class_names}

    def check(match: Match) -> bool:
        ty = match[name].type()
        if ty.kind() != "ClassType":
            return False
        return _MANGLE.sub("", ty.qualified_name()) in expected

    return check


def _calls_function(name: str, function: str):
    def check(match: Match) -> bool:
        ty = match[name].type()
        return ty.kind() == "FunctionType" and str(ty).rsplit(".", 1)[-1] == function

    return check


def _calls_method(name: str, method: str, traced_copies: bool = True):
    """The node producing ``%name`` calls ``method`` (or, with ``traced_copies``, ``method1``, ``method2``, ...)."""
    accepted = re.compile(re.escape(method) + (r"\d*" if traced_copies else ""))

    def check(match: Match) -> bool:
        return accepted.fullmatch(match.node(name).s("name")) is not None

    return check


def _constant_is(name: str, expected: int):
    def check(match: Match) -> bool:
        value = match[name]
        return value.node().kind() == "prim::Constant" and type(value.toIValue()) is int and value.toIValue() == expected

    return check


# The op whose output would be observed, then the relu that follows it.
# (IR lines, pattern inputs, filters).
_FIRST_OPS = {
    "nn_linear": ('%first_output = prim::CallMethod[name="forward"](%first, %input)', ["%input", "%first"],
                  (_module_type_is("first", "torch.nn.modules.linear.Linear"),)),
    "aten_linear": ("%first_output = aten::linear(%input, %weight, %bias)", ["%input", "%weight", "%bias"], ()),
    "nn_conv": ('%first_output = prim::CallMethod[name="forward"](%first, %input)', ["%input", "%first"],
                (_module_type_is("first", *(f"torch.nn.modules.conv.Conv{d}d" for d in (1, 2, 3))),)),
    "add": ("%first_output = aten::add(%a, %b, %alpha)", ["%a", "%b", "%alpha"], (_constant_is("alpha", 1),)),
    "add_": ("%first_output = aten::add_(%a, %b, %alpha)", ["%a", "%b", "%alpha"], (_constant_is("alpha", 1),)),
    "nn_batch_norm": ('%first_output = prim::CallMethod[name="forward"](%first, %input)', ["%input", "%first"],
                      (_module_type_is("first", *(f"torch.nn.modules.batchnorm.BatchNorm{d}d" for d in (2, 3))),)),
    "mul": ("%first_output = aten::mul(%a, %b)", ["%a", "%b"], ()),
    "mul_": ("%first_output = aten::mul_(%a, %b)", ["%a", "%b"], ()),
}
_RELU_OPS = {
    # No name in the pattern: a traced model that calls one ReLU module twice
    # records the second call as ``forward1`` (and so on), and the reference
    # delays observation across any ``forward\d*`` call of a ReLU.
    "nn_relu": (
        "%second_output = prim::CallMethod(%relu, %first_output)",
        ["%relu"],
        (_module_type_is("relu", "torch.nn.modules.activation.ReLU"), _calls_method("second_output", "forward")),
    ),
    "f_relu": ("%second_output = prim::CallFunction(%relu, %first_output, %inplace)", ["%relu", "%inplace"],
               (_calls_function("relu", "relu"),)),
    "aten_relu": ("%second_output = aten::relu(%first_output)", [], ()),
    "aten_relu_": ("%second_output = aten::relu_(%first_output)", [], ()),
}


# The reference's mul patterns ask for a ReLU module's ``forward`` exactly, so
# a traced second call (``forward1``) after a mul observes the mul output.
_EXACT_RELU_METHOD = frozenset({"mul", "mul_"})


def _delay_pattern(first: str, second: str) -> tuple[str, Any, tuple]:
    first_line, first_inputs, first_filters = _FIRST_OPS[first]
    second_line, second_inputs, second_filters = _RELU_OPS[second]
    if second == "nn_relu" and first in _EXACT_RELU_METHOD:
        second_filters = (second_filters[0], _calls_method("second_output", "forward", traced_copies=False))
    inputs = ", ".join(first_inputs + second_inputs)
    text = f"graph({inputs}):\n    {first_line}\n    {second_line}\n    return (%second_output)"
    return f"{first}_{second}", compile_pattern(text), first_filters + second_filters


# Values matched as %first_output are observed at %second_output instead, so
# the fused op (e.g. quantized::conv2d_relu) gets the relu's output range.
DELAYED_OBSERVATION = [_delay_pattern(first, second) for first in _FIRST_OPS for second in _RELU_OPS]


# Observer modules hold their dtype as a ScalarType, which reads back as its number.
_SCALAR_TYPES = {5: torch.float16, 12: torch.qint8, 13: torch.quint8, 14: torch.qint32, 6: torch.float32}


def _observer_dtype(observer: CppModule) -> torch.dtype | None:
    if not observer.hasattr("dtype"):
        return None
    dtype = observer.getattr("dtype")
    return _SCALAR_TYPES.get(dtype) if isinstance(dtype, int) else dtype


def _is_embedding_bag_placeholder(observer: CppModule) -> bool:
    """A ``PlaceholderObserver`` whose ``custom_op_name`` names an embedding_bag kernel."""
    return (
        "PlaceholderObserver" in observer._type().qualified_name()
        and observer.hasattr("custom_op")
        and "embedding_bag_" in observer.getattr("custom_op")
    )


def parse_quant_type(quant_type: Any) -> QuantType:
    if isinstance(quant_type, QuantType):
        return quant_type
    if isinstance(quant_type, str) and quant_type.lower() in ("static", "dynamic"):
        return QuantType.STATIC if quant_type.lower() == "static" else QuantType.DYNAMIC
    if isinstance(quant_type, int) and not isinstance(quant_type, bool) and quant_type in (0, 1):
        return QuantType(quant_type)
    raise ValueError(f"quant_type must be QuantType.STATIC/DYNAMIC or 'static'/'dynamic', got {quant_type!r}")


def _scripted(qconfig_dict: Any) -> Any:
    if is_qconfig_mapping(qconfig_dict):
        return map_qconfigs(
            qconfig_dict, lambda qconfig: qconfig if is_scripted_qconfig(qconfig) else script_qconfig(qconfig)
        )
    return {
        key: qconfig if qconfig is None or is_scripted_qconfig(qconfig) else script_qconfig(qconfig)
        for key, qconfig in qconfig_dict.items()
    }


class _ObserverPlacement:
    """The analysis state and the insertion walk over one module tree."""

    def __init__(
        self,
        root: CppModule,
        qconfigs: dict[str, QConfig | None],
        quant_type: QuantType,
        dry_run: bool = False,
        op_qconfigs: dict[Node, QConfig | None] | None = None,
    ):
        self.root = root
        self.qconfigs = qconfigs
        # Ops whose qconfig is not their module's (QConfigMapping object types and order entries).
        self.op_qconfigs = op_qconfigs or {}
        self.quant_type = quant_type
        # A dry run decides everything and changes nothing (no observer is
        # inserted); it reports the ``if`` nodes whose branches disagree.
        self.dry_run = dry_run
        self.inconsistent_ifs: list[tuple[Node, Graph]] = []
        self.delayed: dict[Value, Value] = {}
        self.observer_for_value: dict[Value, CppModule] = {}
        # call-site value -> callee values (the callee's output first, then inputs of consumers)
        self.boundary: dict[Value, list[Value]] = {}
        self.pass_through: dict[Value, list[Value]] = {}
        self.observed: set[Value] = set()  # observer outputs
        self.observer_calls: set[Node] = set()
        self.block_observers: dict[Block, list[tuple[str, CppModule]]] = {}
        self.next_id = 0
        # values observed by an observer call of their own (or by the callee returning them)
        self.explicit: set[Value] = set()
        self._keep: list[Any] = []  # graph/block wrappers used as keys stay alive
        self._instances_by_type: dict[str, list[CppModule]] | None = None

    def for_insertion(self) -> "_ObserverPlacement":
        """This dry run's analysis, ready for the walk that inserts observers (the graphs are unchanged)."""
        self.dry_run = False
        self.inconsistent_ifs = []
        self.block_observers = {}
        self.explicit = set()
        return self

    # ---- analysis -------------------------------------------------------

    def analyze(self, method: str) -> None:
        calls = call_graph(self.root, method)
        self.call_graph = calls
        analysed_functions: set[Graph] = set()
        for key in callees_first(calls):
            data = calls.nodes[key]
            graph = data["graph"]
            self._keep.append(graph)
            self._find_delayed(graph)
            qconfig = self.qconfigs.get(data["instances"][0]) if data["instances"] else None
            if qconfig is not None or self.op_qconfigs:
                self._fill_observers(graph, qconfig)
            self._fill_pass_through(graph, analysed_functions)
        for path, module, name in self._instance_methods(method):
            self._fill_boundary(module, method_graph(module, name))

    def _instance_methods(self, method: str):
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
                target = self._invoked(module, node)
                if target is not None:
                    sub_path = ".".join(p for p in [path, *getattr_path(node.inputsAt(0))] if p)
                    stack.append((sub_path, target, node.s("name")))

    def _find_delayed(self, graph: Graph) -> None:
        index = NodeIndex(graph)
        for _, pattern, filters in DELAYED_OBSERVATION:
            for match in find_matches(graph, pattern, index):
                # A traced call of a ReLU module whose result was unused returns
                # None: the value before it stays the one to observe.
                if rules.is_tensor_or_tensor_list(match["second_output"]) and all(check(match) for check in filters):
                    self.delayed[match["first_output"]] = match["second_output"]

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
        if (
            rules.is_bias(value)
            or not rules.is_tensor_or_tensor_list(value)
            or rules.is_embedding_bag_float_arg(value)
        ):
            return None
        node = value.node()
        producer_qconfig = self._qconfig_of(node, module_qconfig)
        if self.quant_type == QuantType.STATIC:
            if (
                producer_qconfig is not None
                and not rules.is_weight_only(node)
                and (rules.is_quantizable(node, QuantType.STATIC) or rules.is_propagating(node))
            ):
                return self._observer_module(value, producer_qconfig)
        qconfig = next(
            (
                reader_qconfig
                for use in value.uses()
                if rules.is_quantizable_use(use.user, use.offset, self.quant_type)
                and (reader_qconfig := self._qconfig_of(use.user, module_qconfig)) is not None
            ),
            None,
        )
        if self.quant_type == QuantType.DYNAMIC:
            weight_only_qconfig = next(
                (
                    self._qconfig_of(use.user, module_qconfig)
                    for use in value.uses()
                    if rules.is_weight_only(use.user) and self._qconfig_of(use.user, module_qconfig) is not None
                ),
                None,
            )
            # Weight-only quantization needs no calibration, so the dynamic API
            # gives an embedding_bag what the static API gives when its qconfig asks for it.
            if (
                weight_only_qconfig is not None
                and rules.is_weight_only_weight(value)
                and _is_embedding_bag_placeholder(weight_only_qconfig.weight)
            ):
                return weight_only_qconfig.weight
            # fp16 dynamic quantization converts weights only.
            if qconfig is not None and not rules.is_weight(value):
                if _observer_dtype(self._observer_module(value, qconfig)) == torch.float16:
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
                callee_graph, offset = self._callee(module, node)
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

    def _invoked(self, module: CppModule, node: Node) -> CppModule | None:
        path = getattr_path(node.inputsAt(0))
        if path is None:
            return None
        target: Any = module
        for name in path:
            if not isinstance(target, CppModule) or not target.hasattr(name):
                return None
            target = target.getattr(name)
        return target if isinstance(target, CppModule) else None

    def _callee(self, module: CppModule, node: Node) -> tuple[Graph | None, int]:
        if node.kind() == "prim::CallMethod":
            target = self._invoked(module, node)
            if target is None:
                return None, 0
            graph = method_graph(target, node.s("name"))
            self._keep.append(graph)
            return graph, 0
        return rules.function_graph(node), 1

    def observer_for(self, value: Value, visiting: frozenset = frozenset()) -> CppModule | None:
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

    # ---- insertion ------------------------------------------------------

    def is_observed(self, value: Value, observed: set) -> bool:
        return value in observed or value in self.observed

    def _record(self, value: Value, observer: CppModule, to_observe: dict, observed: set) -> None:
        target = self.delayed.get(value, value)
        if not rules.is_tensor_or_tensor_list(target):
            # An Optional[Tensor] (an `if self.training:` branch that returns
            # None in eval mode) can be None at run time: observers take a Tensor.
            return
        to_observe[target] = observer
        observed.add(target)
        self.explicit.add(target)

    def _propagate(self, value: Value, observed: set) -> None:
        inputs = self.pass_through.get(value)
        if inputs and all(self.is_observed(v, observed) for v in inputs):
            observed.add(value)

    def _should_observe(self, node: Node, observed: set) -> bool:
        for out in outputs_of(node):
            if any(rules.is_quantizable_use(u.user, u.offset, self.quant_type) for u in out.uses()):
                return True
        name = rules.aten_name(node)
        if name in rules.PROPAGATE_SINGLE_INPUT_ATEN:
            return self.is_observed(node.inputsAt(0), observed)
        if name in rules.PROPAGATE_BINARY_ATEN:
            return self.is_observed(node.inputsAt(0), observed) and self.is_observed(node.inputsAt(1), observed)
        return True

    def observe_block(
        self,
        block: Block,
        graph: Graph,
        module: CppModule,
        observed: set,
        entry: bool = False,
        in_function: bool = False,
        loop_body: bool = False,
    ) -> tuple[list, list, list[int]]:
        """Record and insert the observers ``block`` needs; tell the caller about its boundary.

        Returns the observers wanted for the block's inputs and outputs (the
        caller inserts those at the call site) and the indices of outputs
        that leave the block already observed. A loop body observes what it
        hands to the next iteration itself.
        """
        boundary: set[Value] = set()
        input_observers: list = []
        output_observers: list = []
        if not entry:
            boundary.update(inputs_of(graph))
            boundary.update(outputs_of(graph))
            if not loop_body:
                boundary.update(outputs_of(block))
            input_observers = [self.observer_for(v) for v in inputs_of(block)]
            output_observers = [
                None if self.is_observed(v, observed) else self.observer_for(v) for v in outputs_of(block)
            ]
        self._keep.append(block)
        visited = block in self.block_observers
        if visited and not self.dry_run:
            # Another instance of the same class type: its observers have the
            # same names, each instance its own copies.
            for name, observer in self.block_observers[block]:
                module.setattr(name, copy.deepcopy(observer))

        to_observe: dict[Value, CppModule] = {}
        for value in inputs_of(block):
            if value not in boundary and value not in to_observe and not self.is_observed(value, observed):
                observer = self.observer_for(value)
                if observer is not None:
                    self._record(value, observer, to_observe, observed)

        for node in list(block.nodes()):
            if node in self.observer_calls:
                continue
            kind = node.kind()
            if kind == "prim::CallMethod" or rules.is_user_function_call(node):
                if not self._observe_call(node, graph, module, observed, boundary, to_observe, in_function):
                    continue
            elif kind == "prim::If":
                self._observe_if(node, graph, module, observed, boundary, to_observe, in_function)
            elif kind == "prim::Loop":
                self._observe_loop(node, graph, module, observed, boundary, to_observe)
            for value in outputs_of(node):
                self._propagate(value, observed)
                if value not in boundary and not self.is_observed(value, observed):
                    observer = self.observer_for(value)
                    if observer is not None and self._should_observe(node, observed):
                        self._record(value, observer, to_observe, observed)

        observed_outputs = [i for i, v in enumerate(outputs_of(block)) if self.is_observed(v, observed)]
        if not visited and self.dry_run:
            self.block_observers[block] = []
        elif not visited:
            inserted: list[tuple[str, CppModule]] = []
            for value, observer in to_observe.items():
                if in_function:
                    raise RuntimeError(
                        f"value %{value.debugName()} inside a TorchScript function called from "
                        f"{module._type().qualified_name()} needs an observer; observers can only be "
                        "inserted in module methods (make the function a method or a submodule)"
                    )
                self._insert_observer(value, graph, module, observer, inserted)
            self.block_observers[block] = inserted
        return input_observers, output_observers, observed_outputs

    def _observe_call(self, node, graph, module, observed, boundary, to_observe, in_function) -> bool:
        if node.kind() == "prim::CallMethod":
            callee = self._invoked(module, node)
            if callee is None:
                return False
            callee_graph, offset, callee_in_function = method_graph(callee, node.s("name")), 0, in_function
        else:
            callee_graph, offset, callee_in_function = rules.function_graph(node), 1, True
            callee = module
            if callee_graph is None:
                return True
        self._keep.append(callee_graph)
        params = inputs_of(callee_graph)
        callee_observed = {
            param for i, param in enumerate(params) if self.is_observed(node.inputsAt(i + offset), observed)
        }
        inputs_wanted, outputs_wanted, observed_outputs = self.observe_block(
            callee_graph.block(), callee_graph, callee, callee_observed, False, callee_in_function
        )
        outputs = outputs_of(node)
        for index in observed_outputs:
            observed.add(outputs[index])
            self.explicit.add(outputs[index])
        for i in range(len(params)):
            value = node.inputsAt(i + offset)
            if inputs_wanted[i] is not None and value not in boundary and not self.is_observed(value, observed):
                self._record(value, inputs_wanted[i], to_observe, observed)
        for value, wanted in zip(outputs, outputs_wanted):
            if wanted is not None and value not in boundary and not self.is_observed(value, observed):
                self._record(value, wanted, to_observe, observed)
        return True

    def _observe_if(self, node, graph, module, observed, boundary, to_observe, in_function=False) -> None:
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
            _, outputs_wanted, observed_outputs = self.observe_block(block, graph, module, observed)
            block_outputs = outputs_of(block)
            for value, wanted in zip(block_outputs, outputs_wanted):
                if wanted is not None and value not in boundary and not self.is_observed(value, observed):
                    self._record(value, wanted, to_observe, observed)
            for index in observed_outputs:
                observed.add(block_outputs[index])
            state = [self.is_observed(v, observed) for v in block_outputs]
            states.append(state)
            agreed = state if agreed is None else [a and b for a, b in zip(agreed, state)]
        if not in_function and any(state != states[0] for state in states):
            self.inconsistent_ifs.append((node, graph))
        if node.outputsSize() == 1 and agreed == [False]:
            self._observe_branch_results(node, observed, to_observe)
            agreed = [self.is_observed(node.output(), observed)]
        for value, is_obs in zip(outputs_of(node), agreed or []):
            if is_obs:
                observed.add(value)

    def _observe_branch_results(self, node, observed, to_observe) -> None:
        """Observe, inside its branch, each unobserved result of a one-output ``if`` that some branch observes.

        Each branch then hands back a value quantized with its own range, as
        when both branches end in a conv; a result defined outside its branch
        leaves the ``if`` output to be observed after the ``if``.
        """
        blocks = [b for b in nested_blocks(node) if not rules.always_raises(b)]
        results = [next(b.outputs()) for b in blocks]
        wanted = self.observer_for(node.output())
        if wanted is None or not any(self.is_observed(v, observed) for v in results):
            return
        missing = [(b, v) for b, v in zip(blocks, results) if not self.is_observed(v, observed)]
        if not all(rules.is_defined_in(v, b) and rules.is_tensor_or_tensor_list(v) for b, v in missing):
            return
        for _, value in missing:
            self._record(value, wanted, to_observe, observed)
        observed.add(node.output())

    def _observe_loop(self, node, graph, module, observed, boundary, to_observe) -> None:
        """Observe a ``prim::Loop`` body and decide, per carried value, how it crosses iterations.

        Static mode, a carried parameter that a quantizable op reads (or that
        an add/mul/cat combines with a back-edge value wanting an observer):

        - carried quantized, when the value entering the loop and the value
          the body hands back can both be observed: each is observed where it
          is produced (the entry before the loop, the back edge in the body,
          each with an observer of its own, since their ranges can differ a
          lot — a raw input versus a relu output), the parameter and the loop
          output count as observed, and convert lets the loop carry the
          quantized tensors (see ``passes._quant_propagation``);
        - otherwise the parameter is observed at the start of the body, so one
          observer sees the value on entry and on every back edge, and the
          carried value stays float between iterations.

        Dynamic mode observes parameters at the start of the body.
        """
        body = next(node.blocks())
        entries = inputs_of(node)[2:]
        carried = []
        for param, entry, back in zip(rules.loop_carried_params(node), entries, rules.loop_back_edges(node)):
            if self.quant_type != QuantType.STATIC or not rules.is_tensor_or_tensor_list(param):
                continue
            back_inside = back != param and rules.is_defined_in(back, body)
            wanted = self.observer_for(param)
            if wanted is None and back_inside and any(rules.is_propagating(u.user) for u in param.uses()):
                wanted = self.observer_for(back)
            if wanted is None:
                continue
            entry_ok = self.is_observed(entry, observed) or entry not in boundary
            back_ok = back == param or back_inside or back in self.explicit
            if not (entry_ok and back_ok and param.type().isSubtypeOf(torch._C.TensorType.get())):
                self.observer_for_value[param] = wanted
                continue
            if not self.is_observed(entry, observed):
                self._record(entry, wanted, to_observe, observed)
            observed.add(param)
            carried.append((param, back, wanted))
        self.observe_block(body, graph, module, observed, loop_body=True)
        for param, back, wanted in carried:
            if back != param and back not in self.explicit:
                self._record(back, self.observer_for(back) or wanted, to_observe, observed)
        for index, (param, _, _) in enumerate(carried):
            observed.add(node.outputsAt(param.offset() - 1))

    def _instances_of(self, module: CppModule) -> list[CppModule]:
        if self._instances_by_type is None:
            self._instances_by_type = instances_by_type(self.root)
        return self._instances_by_type.get(module._type().qualified_name(), [])

    def _insert_observer(self, value, graph, module, template, inserted) -> None:
        if value in self.observed:
            return
        observer = copy.deepcopy(template)
        name = f"_observer_{self.next_id}"
        self.next_id += 1
        while module.hasattr(name):
            name = f"_observer_{self.next_id}"
            self.next_id += 1
        # Listed before the slot exists: an empty slot cannot be read.
        instances = self._instances_of(module)
        register_submodule(module, name, observer)
        # The slot now exists on every instance of the class type. Instances
        # that forward never calls (a residual block's unused FloatFunctional)
        # are never visited, and an empty module slot crashes the process as
        # soon as anything lists the submodules: each gets its own observer.
        for instance in instances:
            instance.setattr(name, copy.deepcopy(template))
        module.setattr(name, observer)
        inserted.append((name, observer))

        self_value = next(graph.inputs())
        get = graph.create("prim::GetAttr", [self_value], 1)
        get.s_("name", name)
        get.output().setType(observer._type())
        get.insertAfter(value.node())
        get.output().setDebugName(name)
        call = graph.create("prim::CallMethod", [get.output(), value], 1)
        call.s_("name", "forward")
        call.insertAfter(get)
        call.output().copyMetadata(value)
        value.replaceAllUsesWith(call.output())
        call.replaceInput(1, value)
        self.observer_calls.add(call)
        self.observed.add(call.output())


# Rounds of "find the ifs whose branches disagree, move their continuations":
# each round can expose an outer `if` (whose branch now ends in the inner one).
_MAX_CONTINUATION_ROUNDS = 8
# Nodes a graph may gain by moved continuations: its own size, and at least this.
_MIN_CONTINUATION_BUDGET = 1000


def _nested_nodes(node: Node):
    for block in nested_blocks(node):
        yield from walk(block)


def _uses_any(nodes: list[Node], values: set[Value]) -> bool:
    return any(v in values for node in nodes for inner in [node, *_nested_nodes(node)] for v in inputs_of(inner))


def _node_count(nodes: list[Node]) -> int:
    return sum(1 + sum(1 for _ in _nested_nodes(node)) for node in nodes)


def _move_continuation_into_branches(graph: Graph, if_node: Node, op_qconfigs: dict[Node, Any]) -> int:
    """Move the nodes after ``if_node`` in its block into every branch; returns the nodes added.

    Each branch gets its own copy of the rest of the block, reading that
    branch's results; the ``if`` then returns what the block returned::

        %y = prim::If(%c)            %r = prim::If(%c)
          block0(): -> (%a)            block0(): %r.0 = f(%a) -> (%r.0)
          block1(): -> (%b)            block1(): %r.1 = f(%b) -> (%r.1)
        %r = f(%y)                   -> (%r)
        -> (%r)
    """
    block = if_node.owningBlock()
    nodes = list(block.nodes())
    rest = nodes[nodes.index(if_node) + 1:]
    returned = outputs_of(block)
    old_outputs = outputs_of(if_node)
    added = _node_count(rest) * (len(nested_blocks(if_node)) - 1)
    for branch in nested_blocks(if_node):
        env: dict[Value, Value] = dict(zip(old_outputs, outputs_of(branch)))
        branch_return = branch.returnNode()
        for node in rest:
            clone = graph.createClone(node, lambda v: env.get(v, v))
            clone.insertBefore(branch_return)
            for old_node, new_node in zip([node, *_nested_nodes(node)], [clone, *_nested_nodes(clone)]):
                if old_node in op_qconfigs:
                    op_qconfigs[new_node] = op_qconfigs[old_node]
            for old, new in zip(outputs_of(node), outputs_of(clone)):
                new.copyMetadata(old)
                env[old] = new
        branch_return.removeAllInputs()
        for value in returned:
            branch_return.addInput(env.get(value, value))
    block_return = block.returnNode()
    for index, value in enumerate(returned):
        result = if_node.addOutput()
        result.copyMetadata(value)
        block_return.replaceInput(index, result)
    for node in reversed(rest):
        node.destroy()
    for index in reversed(range(len(old_outputs))):
        if_node.eraseOutput(index)
    return added


def _has_if_with_tensor_result(root: CppModule, method_name: str) -> bool:
    """Whether a method reachable from ``root.<method_name>`` has an ``if`` returning a Tensor (or list)."""
    for _, data in call_graph(root, method_name).nodes(data=True):
        for node in data["graph"].findAllNodes("prim::If", True):
            if any(rules.is_tensor_or_tensor_list(v) for v in outputs_of(node)):
                return True
    return False


def _separate_branch_continuations(
    root: CppModule, qconfigs: dict, quant_type: QuantType, method_name: str, op_qconfigs: dict[Node, Any]
) -> _ObserverPlacement | None:
    """Give each side of an ``if`` whose branches are observed differently its own continuation.

    The ops after such an ``if`` see both sides' values; observed once, they
    would get one range for both (a conv side would be quantized with the
    range an ``exp`` side widened). Moving the rest of the block into each
    branch gives every side its own observers. Ifs the reference accepts
    (consistent branches) are left alone, so their bits stay the reference's.
    Each graph grows by at most its own size (or ``_MIN_CONTINUATION_BUDGET``
    nodes); past that, an ``if`` keeps one continuation for both sides.

    Returns the last dry run when it left the graphs as it found them: its
    analysis still holds, so the insertion walk reuses it.
    """
    if not _has_if_with_tensor_result(root, method_name):
        return None
    budget: dict[Graph, int] = {}
    for _ in range(_MAX_CONTINUATION_ROUNDS):
        dry = _ObserverPlacement(root, qconfigs, quant_type, dry_run=True, op_qconfigs=op_qconfigs)
        dry.analyze(method_name)
        graph = method_graph(root, method_name)
        dry.observe_block(graph.block(), graph, root, set(), entry=True)
        moved = False
        done: set[Node] = set()
        # Recorded after their branches, so reversed: an `if` later in a block,
        # or nested in a later node, moves before the one whose continuation holds it.
        for if_node, owner in reversed(dry.inconsistent_ifs):
            if if_node in done or not is_alive(if_node):
                continue
            done.add(if_node)
            block_nodes = list(if_node.owningBlock().nodes())
            rest = block_nodes[block_nodes.index(if_node) + 1:]
            if not _uses_any(rest, set(outputs_of(if_node))):
                continue
            if owner not in budget:
                budget[owner] = max(sum(1 for _ in walk(owner)), _MIN_CONTINUATION_BUDGET)
            cost = _node_count(rest) * (len(nested_blocks(if_node)) - 1)
            if cost > budget[owner]:
                continue
            budget[owner] -= _move_continuation_into_branches(owner, if_node, op_qconfigs)
            moved = True
        if not moved:
            return dry.for_insertion()
    return None


def insert_observers(module: Any, method_name: str, qconfig_dict: dict, inplace: bool, quant_type: Any) -> Any:
    """Observe every value of ``module.<method_name>`` (and what it calls) that quantization needs.

    Called alone, it does what PyTorch's pass of the same name does: the
    graphs are cleaned up first (``passes._observer_preprocessing``: linear
    swapped and fused, fork/wait inlined, traced convolutions canonicalised,
    lists built by ``append`` folded into their construct), then observed.

    ``module`` is a ScriptModule or its ``._c`` and comes back as the same
    kind; ``qconfig_dict`` may hold QConfigs or scripted QConfigs
    (``qgraph.script_qconfig``); ``quant_type`` is a ``QuantType`` or
    ``"static"`` / ``"dynamic"``. The observers go into a clone with fresh
    class types, so the caller's graphs never change (nor the types that
    scripting hands to later instances of the same Python class); with
    ``inplace=False`` the clone has copies of the tensors, with
    ``inplace=True`` it shares the caller's, and a Python ScriptModule is
    re-pointed at it. Instances of one class type that resolve to different
    qconfigs get class types of their own.
    """
    _check_method(as_cpp(module), method_name)
    root = clone_module(as_cpp(module), share_values=inplace)
    preprocess(root, method_name)
    root = insert_observers_in_place(root, method_name, qconfig_dict, quant_type)
    if isinstance(module, torch.jit.ScriptModule):
        if inplace:
            module._reconstruct(root)
            return module
        return as_python(root)
    return root


def insert_observers_in_place(module: CppModule, method_name: str, qconfig_dict: dict, quant_type: Any) -> CppModule:
    """``insert_observers`` on ``module`` itself, whose graphs are already cleaned up.

    For a pipeline that cloned the caller's model and runs
    ``passes._observer_preprocessing``'s steps as stages of their own
    (``qgraph.prepare``). Returns the prepared module: a new root when
    instances had to get class types of their own (the given one must not be
    used after), else ``module``.
    """
    root = as_cpp(module)
    _check_method(root, method_name)
    kind = parse_quant_type(quant_type)
    scripted = _scripted(qconfig_dict)
    qconfigs = resolve_qconfigs(root, scripted)
    by_position = MappingResolver(root, scripted, method_name).op_qconfigs if is_qconfig_mapping(scripted) else {}
    own_type = qconfig_paths_needing_own_type(root, qconfigs, by_position)
    if own_type:
        root = unshare_types(root, own_type)
    op_qconfigs = _op_qconfigs_by_node(root, by_position)
    placement = _separate_branch_continuations(root, qconfigs, kind, method_name, op_qconfigs)
    if placement is None:
        placement = _ObserverPlacement(root, qconfigs, kind, op_qconfigs=op_qconfigs)
        placement.analyze(method_name)
    graph = method_graph(root, method_name)
    placement.observe_block(graph.block(), graph, root, set(), entry=True)
    return root


def _op_qconfigs_by_node(root: CppModule, by_position: dict[str, dict[OpPosition, Any]]) -> dict[Node, Any]:
    """``MappingResolver.op_qconfigs`` (per module path, by method and walk position) as a map from node."""
    found: dict[Node, Any] = {}
    nodes_of: dict[tuple[str, str], list[Node]] = {}
    for path, positions in by_position.items():
        module = resolve_path(root, path)
        for (method, position), qconfig in positions.items():
            key = (module._type().qualified_name(), method)
            if key not in nodes_of:
                nodes_of[key] = list(walk(method_graph(module, method)))
            found[nodes_of[key][position]] = qconfig
    return found


def _check_method(root: CppModule, method_name: str) -> None:
    if not root._has_method(method_name):
        raise ValueError(f"module {root._type().qualified_name()} has no method {method_name!r}")

"""Observation delayed past a relu: ``{linear, conv, batch_norm, add, mul} -> relu`` observe the relu's output.

The fused quantized op (``quantized::conv2d_relu``, ...) gets the relu's
output range, so the value between the op and its relu is not observed::

    %y = prim::CallMethod[name="forward"](%conv, %x)
    %z = aten::relu(%y)            <- observed here, not at %y

Each (first op, relu) pair is one pattern; ``delayed_observations`` maps
each matched ``%first_output`` to its ``%second_output``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from qgraph.ir import Graph, NodeIndex, Value, class_name_of, ivalue
from qgraph.pattern import Match, Pattern, compile_pattern, find_matches
from qgraph.quant.observed_values import is_tensor_or_tensor_list

__all__ = ["DELAYED_OBSERVATION", "delayed_observations"]

Filter = Callable[[Match], bool]


def _module_type_is(name: str, *class_names: str) -> Filter:
    def check(match: Match) -> bool:
        ty = match[name].type()
        return ty.kind() == "ClassType" and class_name_of(ty) in class_names

    return check


def _calls_function(name: str, function: str) -> Filter:
    def check(match: Match) -> bool:
        ty = match[name].type()
        return ty.kind() == "FunctionType" and str(ty).rsplit(".", 1)[-1] == function

    return check


def _calls_method(name: str, method: str, traced_copies: bool = True) -> Filter:
    """The node producing ``%name`` calls ``method`` (or, with ``traced_copies``, ``method1``, ``method2``, ...)."""
    accepted = re.compile(re.escape(method) + (r"\d*" if traced_copies else ""))

    def check(match: Match) -> bool:
        return accepted.fullmatch(match.node(name).s("name")) is not None

    return check


def _constant_is(name: str, expected: int) -> Filter:
    def check(match: Match) -> bool:
        value = match[name]
        return value.node().kind() == "prim::Constant" and type(ivalue(value)) is int and ivalue(value) == expected

    return check


_CALL_FIRST = '%first_output = prim::CallMethod[name="forward"](%first, %input)'
# The op whose output would be observed, then the relu that follows it.
# (IR lines, pattern inputs, filters).
_FIRST_OPS: dict[str, tuple[str, list[str], tuple[Filter, ...]]] = {
    "nn_linear": (_CALL_FIRST, ["%input", "%first"], (_module_type_is("first", "torch.nn.modules.linear.Linear"),)),
    "aten_linear": ("%first_output = aten::linear(%input, %weight, %bias)", ["%input", "%weight", "%bias"], ()),
    "nn_conv": (
        _CALL_FIRST,
        ["%input", "%first"],
        (_module_type_is("first", *(f"torch.nn.modules.conv.Conv{d}d" for d in (1, 2, 3))),),
    ),
    "add": ("%first_output = aten::add(%a, %b, %alpha)", ["%a", "%b", "%alpha"], (_constant_is("alpha", 1),)),
    "add_": ("%first_output = aten::add_(%a, %b, %alpha)", ["%a", "%b", "%alpha"], (_constant_is("alpha", 1),)),
    "nn_batch_norm": (
        _CALL_FIRST,
        ["%input", "%first"],
        (_module_type_is("first", *(f"torch.nn.modules.batchnorm.BatchNorm{d}d" for d in (2, 3))),),
    ),
    "mul": ("%first_output = aten::mul(%a, %b)", ["%a", "%b"], ()),
    "mul_": ("%first_output = aten::mul_(%a, %b)", ["%a", "%b"], ()),
}
_RELU_OPS: dict[str, tuple[str, list[str], tuple[Filter, ...]]] = {
    # No name in the pattern: a traced model that calls one ReLU module twice
    # records the second call as ``forward1`` (and so on), and the reference
    # delays observation across any ``forward\d*`` call of a ReLU.
    "nn_relu": (
        "%second_output = prim::CallMethod(%relu, %first_output)",
        ["%relu"],
        (_module_type_is("relu", "torch.nn.modules.activation.ReLU"), _calls_method("second_output", "forward")),
    ),
    "f_relu": (
        "%second_output = prim::CallFunction(%relu, %first_output, %inplace)",
        ["%relu", "%inplace"],
        (_calls_function("relu", "relu"),),
    ),
    "aten_relu": ("%second_output = aten::relu(%first_output)", [], ()),
    "aten_relu_": ("%second_output = aten::relu_(%first_output)", [], ()),
}


# The reference's mul patterns ask for a ReLU module's ``forward`` exactly, so
# a traced second call (``forward1``) after a mul observes the mul output.
_EXACT_RELU_METHOD = frozenset({"mul", "mul_"})


def _delay_pattern(first: str, second: str) -> tuple[str, Pattern, tuple[Filter, ...]]:
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


def delayed_observations(graph: Graph) -> dict[Value, Value]:
    """Each value of ``graph`` whose observation moves to the relu after it, with that relu's output."""
    delayed = {}
    index = NodeIndex(graph)
    for _, pattern, filters in DELAYED_OBSERVATION:
        for match in find_matches(graph, pattern, index):
            # A traced call of a ReLU module whose result was unused returns
            # None: the value before it stays the one to observe.
            if is_tensor_or_tensor_list(match["second_output"]) and all(check(match) for check in filters):
                delayed[match["first_output"]] = match["second_output"]
    return delayed

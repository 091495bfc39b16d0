"""Which values of a converted graph hold quantized tensors at run time.

The analysis the float-op report and ``legalize_quantized`` share: a value
is quantized when it comes from ``aten::quantize_per_*``, from a
``quantized::`` op with a quantized result (not dynamic linears, embedding
bags, prepacking; only the weight of an unpack), from an op that keeps its
input's quantization (``qgraph.quant.ops.KEEPS_QUANTIZATION_ATEN``: shape
ops, pooling, mean, upsample, clamp, sigmoid, cat, slicing, ...), or from
list / tuple construction and unpacking around such values.
"""

from __future__ import annotations

from typing import Any, cast

from qgraph.ir.graph import Block, Graph, Node, Value, inputs_of, nested_blocks, outputs_of
from qgraph.quant.ops import KEEPS_QUANTIZATION_ATEN

__all__ = ["quantized_values", "may_hold_tensor", "type_may_hold_tensor"]

# quantized:: ops whose tensor outputs are float (or not activations).
_FLOAT_RESULT_MARKERS = ("dynamic", "embedding", "prepack")
_CONTAINER_READS = frozenset({"prim::ListUnpack", "prim::TupleUnpack", "prim::TupleIndex", "aten::__getitem__"})
_CONTAINER_BUILDS = frozenset({"prim::ListConstruct", "prim::TupleConstruct"})


def may_hold_tensor(value: Value) -> bool:
    """Whether ``value`` is a Tensor or a list, tuple or optional that can hold one."""
    return type_may_hold_tensor(value.type())


def type_may_hold_tensor(type_: Any) -> bool:
    kind = type_.kind()
    if kind == "TensorType":
        return True
    if kind in ("ListType", "OptionalType"):
        return type_may_hold_tensor(type_.getElementType())
    if kind == "TupleType":
        return any(type_may_hold_tensor(t) for t in cast(Any, type_).elements())
    return False


def _quantized_outputs(node: Node, quantized: set[Value]) -> list[Value]:
    """The outputs of ``node`` that hold quantized tensors, given what its inputs hold."""
    kind = node.kind()
    outputs = outputs_of(node)
    if kind in ("aten::quantize_per_tensor", "aten::quantize_per_channel", "aten::quantize_per_tensor_dynamic"):
        return outputs[:1]
    if kind.startswith("quantized::"):
        if any(marker in kind for marker in _FLOAT_RESULT_MARKERS):
            return []
        if kind.endswith("_unpack"):
            return outputs[:1]  # the weight; the bias is float
        return [v for v in outputs if v.type().kind() == "TensorType"]
    if kind in _CONTAINER_BUILDS:
        return outputs if any(v in quantized for v in inputs_of(node)) else []
    if kind in _CONTAINER_READS:
        if node.inputsSize() and node.inputsAt(0) in quantized:
            return [v for v in outputs if may_hold_tensor(v)]
        return []
    if kind.startswith("aten::") and kind[6:] in KEEPS_QUANTIZATION_ATEN:
        first = next((v for v in inputs_of(node) if may_hold_tensor(v)), None)
        if first is not None and first in quantized and outputs and may_hold_tensor(outputs[0]):
            return outputs[:1]
    return []


def _mark_block(block: Block, quantized: set[Value]) -> None:
    for node in block.nodes():
        kind = node.kind()
        if kind == "prim::If":
            branches = nested_blocks(node)
            for branch in branches:
                _mark_block(branch, quantized)
            for i, out in enumerate(outputs_of(node)):
                if all(outputs_of(b)[i] in quantized for b in branches):
                    quantized.add(out)
        elif kind == "prim::Loop":
            _mark_loop(node, quantized)
        else:
            for block_ in nested_blocks(node):
                _mark_block(block_, quantized)
            quantized.update(_quantized_outputs(node, quantized))


def _mark_loop(node: Node, quantized: set[Value]) -> None:
    # Loop-carried values: a carried value is quantized if it enters quantized
    # and every iteration hands it back quantized. Start from the entry and
    # drop assumptions the body breaks, until nothing changes.
    body = nested_blocks(node)[0]
    initial = inputs_of(node)[2:]
    params = inputs_of(body)[1:]
    results = outputs_of(body)[1:]
    assumed = [v in quantized for v in initial]
    while True:
        trial = set(quantized)
        trial.update(p for p, a in zip(params, assumed) if a)
        _mark_block(body, trial)
        kept = [a and r in trial for a, r in zip(assumed, results)]
        if kept == assumed:
            quantized.update(trial)
            quantized.update(out for out, a in zip(outputs_of(node), assumed) if a)
            return
        assumed = kept


def quantized_values(graph: Graph) -> set[Value]:
    """Values of ``graph`` (nested blocks included) that hold quantized tensors at run time.

    A value is quantized when it comes from ``aten::quantize_per_*``, from a
    ``quantized::`` op with a quantized result (not dynamic linears,
    embedding bags, prepacking; only the weight of an unpack), from an op that
    keeps its quantized input quantized (shape ops, pooling, mean, upsample,
    clamp, sigmoid, cat, slicing, ...), or from list/tuple construction and
    unpacking around such values (a container is "quantized" when it holds a
    quantized element). ``if`` outputs are quantized when every branch's is;
    loop-carried values when they enter and come back quantized. Everything
    else, graph inputs included, counts as float.
    """
    quantized: set[Value] = set()
    _mark_block(graph.block(), quantized)
    return quantized

"""A tuple of quantized values dequantized as a whole, which runs but does not load back.

``aten::dequantize(%tuple)`` is the ``Tensor[]`` overload: it returns a list
where the method is annotated to return a tuple, and ``torch.jit.load``
refuses the saved model. Each element is dequantized and the tuple rebuilt
(nested tuples too)::

    %t : (Tensor, Tensor) = prim::TupleConstruct(%a_q, %b_q)
    %out : (Tensor, Tensor) = aten::dequantize(%t)

becomes::

    %a : Tensor = aten::dequantize(%a_q)
    %b : Tensor = aten::dequantize(%b_q)
    %out : (Tensor, Tensor) = prim::TupleConstruct(%a, %b)

A list of quantized values dequantized as a whole is already a list and
stays as it is.
"""

from __future__ import annotations

from typing import Any, cast

from qgraph.ir import TENSOR, Graph, Node, Value, inputs_of, insert_op, outputs_of
from qgraph.pattern import Match, Rewrite
from qgraph.quant.quantized_values import type_may_hold_tensor

__all__ = ["TUPLE_REWRITES"]


def _input_is_tuple(match: Match) -> bool:
    return match["tuple"].type().kind() == "TupleType"


def _dequantize_elements(graph: Graph, value: Value, before: Node) -> Value:
    """A float counterpart of ``value``: tensors and lists dequantized, tuples rebuilt element-wise."""
    kind = value.type().kind()
    if kind == "TensorType" or (kind == "ListType" and type_may_hold_tensor(value.type().getElementType())):
        if value.node().kind() == "aten::dequantize":
            return value  # already float
        type_ = TENSOR if kind == "TensorType" else value.type()
        return insert_op(graph, "aten::dequantize", [value], before=before, output_types=[type_]).output()
    if kind != "TupleType":
        return value
    producer = value.node()
    if producer.kind() == "prim::TupleConstruct":
        elements = inputs_of(producer)
    else:
        types = list(cast(Any, value.type()).elements())
        unpack = insert_op(graph, "prim::TupleUnpack", [value], before=before, n_outputs=len(types), output_types=types)
        elements = outputs_of(unpack)
    floats = [_dequantize_elements(graph, element, before) for element in elements]
    rebuilt = insert_op(graph, "prim::TupleConstruct", floats, before=before, output_types=[value.type()])
    return rebuilt.output()


def _dequantize_tuple(graph: Graph, match: Match, before: Node) -> list[Value]:
    rebuilt = _dequantize_elements(graph, match["tuple"], before)
    # The tuple's static type (tensor types of a trace included) stays the dequantize's.
    rebuilt.setType(match["out"].type())
    return [rebuilt]


TUPLE_REWRITES = [
    Rewrite(
        name="dequantize_tuple_per_element",
        pattern="""graph(%tuple):
            %out = aten::dequantize(%tuple)
            return (%out)""",
        replacement=_dequantize_tuple,
        filters=(_input_is_tuple,),
    ),
]

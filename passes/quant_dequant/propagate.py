"""Carry quantization through ops that need no observer, on an inlined graph: the steps after insertion.

After observers became quantize / dequantize pairs, the method is inlined
and these steps finish the debug model, in the reference's order (the
sequence is ``passes.composite.quant_dequant_stages``; steps 2 and 3 are the
passes ``replicate_quantize`` and ``replicate_dequantize``):

1. dynamic quantization: an activation's choose_qparams / quantize /
   dequantize chain with several users is repeated per user; a chain whose
   single user is not dynamically quantizable is removed (the value stays float);
2. a quantize of an ``if`` output moves into each branch;
3. a dequantize with several uses becomes one dequantize per use;
4. a clamp / hardtanh bound shared with other uses gets its own copy;
5. general ops whose tensor inputs are all dequantized values run on the
   quantized tensors (``general_ops.py``), value ops requantized with their
   input's qparams::

       %a = aten::dequantize(%q)
       %y = aten::avg_pool2d(%a, ...)
     becomes
       %a = aten::dequantize(%q)
       %y = aten::avg_pool2d(%a, ...)
       %s = aten::q_scale(%q)
       %z = aten::q_zero_point(%q)
       %t = prim::dtype(%q)
       %y.quant = aten::quantize_per_tensor(%y, %s, %z, %t)
       %y.quant.dequant.0 = aten::dequantize(%y.quant)

6. a dequantize whose only user is ``size`` / ``len`` / ``dim`` / ``numel``
   is dropped.
"""

from __future__ import annotations

import torch

from passes.quant_dequant.general_ops import propagate_quantization
from passes.quant_dequant.nodes import choose_qparams_quant_dequant
from qgraph.ir import (
    Graph,
    Node,
    NodeBuilder,
    Value,
    clone_node,
    erase_nodes,
    outputs_of,
    stack_order,
)
from qgraph.pattern import Match, Rewrite, find_matches, rewrite
from qgraph.quant.observed_values import aten_name, is_quantizable
from qgraph.quant.ops import CLAMP_ATEN, TENSOR_INFO_ATEN
from qgraph.quant.quant_type import QuantType

__all__ = [
    "replicate_choose_qparams_quant_dequant",
    "remove_redundant_quantization",
    "replicate_clamp_scalar_args",
    "propagate_quantization",
    "remove_redundant_dequantize",
]

_FLOAT = torch._C.FloatType.get()
_INT = torch._C.IntType.get()

_DYNAMIC_QUANT_CHAIN = """graph(%a, %reduce_range, %a_dtype):
    %a_scale : float, %a_zero_point : int = aten::_choose_qparams_per_tensor(%a, %reduce_range)
    %a_quant = aten::quantize_per_tensor(%a, %a_scale, %a_zero_point, %a_dtype)
    %a_dequant = aten::dequantize(%a_quant)
    return (%a_dequant)"""


def _single_use_by(predicate):
    def check(match: Match) -> bool:
        uses = match["a_dequant"].uses()
        return len(uses) == 1 and predicate(uses[0].user)

    return check


REDUNDANT_QUANTIZATION = [
    # A run-time-quantized activation whose user is not a dynamically
    # quantized op stays float.
    Rewrite(
        name="unused_dynamic_activation_quant",
        pattern=_DYNAMIC_QUANT_CHAIN,
        replacement="""graph(%a, %reduce_range, %a_dtype):
            return (%a)""",
        filters=(_single_use_by(lambda user: not is_quantizable(user, QuantType.DYNAMIC)),),
    ),
]

REDUNDANT_DEQUANTIZE = [
    # size/len/dim/numel read the same from the quantized tensor.
    Rewrite(
        name="dequantize_for_tensor_info",
        pattern="""graph(%a_quant):
            %a_dequant = aten::dequantize(%a_quant)
            return (%a_dequant)""",
        replacement="""graph(%a_quant):
            return (%a_quant)""",
        filters=(_single_use_by(lambda user: aten_name(user) in TENSOR_INFO_ATEN),),
    ),
]


def replicate_choose_qparams_quant_dequant(graph: Graph) -> None:
    """A run-time quantized activation with several users gets its own chain per user."""
    chains = []
    for match in find_matches(graph, _DYNAMIC_QUANT_CHAIN):
        if len(match["a_dequant"].uses()) > 1:
            chains.append((match.node("a_scale"), match.node("a_quant"), match.node("a_dequant")))
    for _, quant, dequant in chains:
        value, dtype = quant.inputsAt(0), quant.inputsAt(3)
        dequantized = dequant.output()
        for use in list(dequantized.uses()):
            new = choose_qparams_quant_dequant(NodeBuilder(graph, before=use.user), value, dtype, quant.kind())
            use.user.replaceInputWith(dequantized, new.output())
    erase_nodes([node for choose, quant, dequant in chains for node in (dequant, quant, choose)])


def _clamp_bound_use(value: Value) -> bool:
    return any(aten_name(u.user) in CLAMP_ATEN and u.offset in (1, 2) for u in value.uses())


def replicate_clamp_scalar_args(graph: Graph) -> None:
    """A clamp bound that has other uses too is copied for each use, so it can be quantized alone."""
    shared: dict[Node, None] = {}
    for node in stack_order(graph):
        for output in outputs_of(node):
            if _clamp_bound_use(output) and len(output.uses()) > 1:
                shared.setdefault(node, None)
    for node in shared:
        for use in list(node.output().uses()):
            clone = clone_node(graph, node, lambda v: v)
            clone.insertBefore(use.user)
            use.user.replaceInput(use.offset, clone.output())
    erase_nodes(list(shared))


def remove_redundant_quantization(graph: Graph) -> int:
    """Step 1, second half: a run-time quantization chain whose single user is not dynamically quantized goes."""
    return rewrite(graph, REDUNDANT_QUANTIZATION)


def remove_redundant_dequantize(graph: Graph) -> int:
    """Step 6: a dequantize whose only user reads tensor metadata (size, len, dim, numel) goes."""
    return rewrite(graph, REDUNDANT_DEQUANTIZE)

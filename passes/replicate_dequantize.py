"""One ``aten::dequantize`` per use of a dequantized value.

Quantized-op fusion matches ``dequantize -> float op -> quantize`` with the
dequantize as part of the match, and a matched value may not be used outside
its match. A dequantize shared by several ops (or by one op twice, as in
``x * x``) therefore blocks every fusion. This pass gives each use its own
dequantize of the same quantized value, placed right before the user, in the
user's block (so a use inside an ``if`` or loop body gets its dequantize
inside that body); the shared dequantize then goes away:

    before                                   after
    %x = aten::dequantize(%x_q)              %x.dequant.0 = aten::dequantize(%x_q)
    %y = aten::mul(%x, %x)                   %x.dequant.1 = aten::dequantize(%x_q)
    %z = prim::If(%c)                        %y = aten::mul(%x.dequant.0, %x.dequant.1)
      block0():                              %z = prim::If(%c)
        %r = aten::relu(%x)                    block0():
        -> (%r)                                  %x.dequant.2 = aten::dequantize(%x_q)
                                                 %r = aten::relu(%x.dequant.2)
                                                 -> (%r)

A dequantize with a single use stays as it is. Outputs do not change: every
copy computes the same float tensor.

No pattern table: the rewrite is a copy per use, whose count and places
depend on the value's uses, not on a local shape.
"""

from __future__ import annotations

from qgraph.ir import Graph, NodeIndex, erase_nodes, insert_op, uses_of

__all__ = ["replicate_dequantize"]


def replicate_dequantize(graph: Graph) -> int:
    """Give every use of a shared ``aten::dequantize`` its own copy, in place.

    Returns the number of shared dequantize nodes replaced.
    """
    if not isinstance(graph, Graph):
        raise TypeError(f"replicate_dequantize takes a torch._C.Graph, got {type(graph).__name__}")
    shared = [node for node in NodeIndex(graph).of_kind("aten::dequantize") if len(node.output().uses()) > 1]
    for dequantize in shared:
        dequantized = dequantize.output()
        for number, (user, offset) in enumerate(uses_of(dequantized)):
            copy = insert_op(
                graph,
                "aten::dequantize",
                [dequantize.input()],
                before=user,
                output_types=[dequantized.type()],
                source=dequantize,
            )
            copy.output().setDebugName(f"{dequantized.debugName()}.dequant.{number}")
            user.replaceInput(offset, copy.output())
    erase_nodes(shared)
    return len(shared)

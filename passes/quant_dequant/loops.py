"""Quantized tensors carried around a ``prim::Loop``, where both the entry and the back edge are quantized.

Observer insertion observes such carried values where they enter the loop
and where each iteration hands them back; after quantize / dequantize
insertion both are dequantized values, and the loop can carry the
quantized tensors instead (each keeps its own qparams).
"""

from __future__ import annotations

from passes.quant_dequant.nodes import dequantize, insert_dequantize_per_use
from qgraph.ir import TENSOR, Block, Graph, Node, NodeBuilder, Value, erase_nodes, inputs_of, nested_blocks, outputs_of

__all__ = ["carry_quantized_through_loop"]


def _quantized_source(value: Value, block: Block) -> Value | None:
    """The quantized tensor ``value`` dequantizes, when ``value`` is a single-use dequantize in ``block``."""
    node = value.node()
    if node.kind() == "aten::dequantize" and node.owningBlock() == block and len(value.uses()) == 1:
        return node.inputsAt(0)
    return None


def carry_quantized_through_loop(graph: Graph, loop: Node) -> list[int]:
    """Let ``loop`` carry quantized tensors where both the entry and the back edge are dequantized.

    Step 5 for ``prim::Loop`` (observer insertion observes such carried
    values on entry and on the back edge)::

        %x.dq = aten::dequantize(%x.q)
        %y = prim::Loop(%n, %true, %x.dq)
          block0(%i, %c):
            ... uses of %c ...
            %b.dq = aten::dequantize(%b.q)
            -> (%true, %b.dq)
        ... uses of %y ...
      becomes
        %y = prim::Loop(%n, %true, %x.q)
          block0(%i, %c):
            %c.dequant.k = aten::dequantize(%c)     (one per use)
            ... uses of %c.dequant.k ...
            -> (%true, %b.q)
        %y.dequant.k = aten::dequantize(%y)         (one per use)

    Each quantized tensor keeps its own qparams, so the entry and the back
    edge need not agree. Returns the indices of the carried values rewritten.
    """
    body = nested_blocks(loop)[0]
    outer = loop.owningBlock()
    params = inputs_of(body)
    returned = outputs_of(body)
    rewritten: list[int] = []
    for index in range(1, len(params)):
        param, back = params[index], returned[index]
        entry = loop.inputsAt(index + 1)
        entry_q = _quantized_source(entry, outer)
        if entry_q is None or not param.type().isSubtypeOf(TENSOR):
            continue
        back_q = param if back == param else _quantized_source(back, body)
        if back_q is None:
            continue
        loop.replaceInput(index + 1, entry_q)
        erase_nodes([entry.node()])
        if back != param:
            body.returnNode().replaceInput(index, back_q)
            erase_nodes([back.node()])
        for use in list(param.uses()):
            if use.user == body.returnNode():
                continue
            dequant = dequantize(NodeBuilder(graph, before=use.user), param, param, len(rewritten))
            use.user.replaceInput(use.offset, dequant.output())
        insert_dequantize_per_use(graph, loop.outputsAt(index - 1), loop.outputsAt(index - 1))
        rewritten.append(index)
    return rewritten

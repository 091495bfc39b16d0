"""Move the quantize of an ``if`` result into the ``if``'s branches.

Quantized-op fusion needs ``dequantize -> float op -> quantize`` in one
block. When the float op is the last op of each branch of an ``if`` and the
quantize reads the ``if``'s result, the quantize sits outside the blocks and
no branch can fuse. This pass quantizes each branch's result inside the
branch, with the same quantization parameters, and lets the ``if`` return
the quantized tensor:

    before                                            after
    %y = prim::If(%c)                                 %y = prim::If(%c)
      block0():                                         block0():
        %a = aten::conv2d(...)                            %a.1 = aten::conv2d(...)
        -> (%a)                                           %a = aten::quantize_per_tensor(%a.1, %s, %z, %t)
      block1():                                           -> (%a)
        %b = aten::relu(%x)                             block1():
        -> (%b)                                           %b.1 = aten::relu(%x)
    %y_q = aten::quantize_per_tensor(%y, %s, %z, %t)      %b = aten::quantize_per_tensor(%b.1, %s, %z, %t)
    %r = aten::dequantize(%y_q)                           -> (%b)
                                                      %r = aten::dequantize(%y)

Both ``aten::quantize_per_tensor`` and ``aten::quantize_per_channel`` move,
as in the reference. Nodes computing the quantization parameters after the
``if`` (e.g. ``prim::GetAttr`` of the scale attribute) move before it so
that both branches see them. Outputs do not change.

Where the reference would give a wrong or broken graph, the quantize stays
where it is: when the ``if`` result has other readers (they would receive a
quantized tensor), when the quantize lives in another block than the ``if``,
or when its parameters depend on the ``if`` itself. An ``if`` with several
results has the quantized one moved (the reference only handles one result).

No pattern table: the rewrite edits every block of the ``if``, which the
pattern language (single-block matches) does not express.
"""

from __future__ import annotations

from qgraph.ir import Graph, Node, NodeIndex, erase_nodes, hoist_before, inputs_of, insert_op

__all__ = ["replicate_quantize"]

QUANTIZE_KINDS = ("aten::quantize_per_tensor", "aten::quantize_per_channel")


def replicate_quantize(graph: Graph) -> int:
    """Quantize ``if`` results inside each branch instead of after the ``if``, in place.

    Returns the number of quantize nodes moved.
    """
    if not isinstance(graph, Graph):
        raise TypeError(f"replicate_quantize takes a torch._C.Graph, got {type(graph).__name__}")
    moved = []
    for quantize in NodeIndex(graph).of_kind(*QUANTIZE_KINDS):
        if _quantizes_if_result(quantize) and hoist_before(_qparams(quantize), quantize.inputsAt(0).node()):
            _move_into_branches(graph, quantize)
            moved.append(quantize)
    erase_nodes(moved)
    return len(moved)


def _quantizes_if_result(quantize: Node) -> bool:
    """Whether ``quantize`` is the only reader of an ``if`` result of its own block."""
    result = quantize.inputsAt(0)
    producer = result.node()
    return (
        producer.kind() == "prim::If" and producer.owningBlock() == quantize.owningBlock() and len(result.uses()) == 1
    )


def _qparams(quantize: Node) -> list:
    return inputs_of(quantize)[1:]


def _move_into_branches(graph: Graph, quantize: Node) -> None:
    result = quantize.inputsAt(0)
    if_node, position = result.node(), result.offset()
    qparams = _qparams(quantize)
    quantized_type = quantize.output().type()
    for block in if_node.blocks():
        returned = list(block.outputs())[position]
        branch_quantize = insert_op(
            graph,
            quantize.kind(),
            [returned, *qparams],
            before=block.returnNode(),
            source=quantize,
        )
        # The reference names the branch's quantized value after the value it
        # replaces as the block's result.
        branch_quantize.output().copyMetadata(returned)
        branch_quantize.output().setType(quantized_type)
        block.returnNode().replaceInput(position, branch_quantize.output())
    result.setType(quantized_type)
    quantize.output().replaceAllUsesWith(result)

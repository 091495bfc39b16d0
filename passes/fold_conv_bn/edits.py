"""The graph edits of folding: a bias the conv reads, the BatchNorm call (or a dead pair) removed.

A conv without bias gets one: a ``bias`` attribute (``Optional[Tensor]``)
is added to its class type when the type has none (traced convs), and the
convolution in the conv's ``forward`` reads it instead of the constant
None. The BatchNorm call goes, its uses reading the conv output; the
``prim::GetAttr`` reads left unused go with it.
"""

from __future__ import annotations

import torch

from qgraph.ir import (
    CppModule,
    Graph,
    Node,
    NodeIndex,
    Value,
    erase_nodes,
    insert_getattr,
    is_constant,
    method_graph,
    register_attribute,
    replace_uses,
)
from qgraph.pattern import Match

__all__ = [
    "CONVOLUTION_KINDS",
    "BIAS_INPUT",
    "ensure_bias_attribute",
    "convolutions_without_bias",
    "remove_batch_norm_call",
    "remove_dead_pair",
]

# Convolution ops a conv's forward may run, with the bias as third input.
CONVOLUTION_KINDS = ("aten::_convolution", "aten::conv1d", "aten::conv2d", "aten::conv3d", "aten::convolution")
BIAS_INPUT = 2

_OPTIONAL_TENSOR = torch._C.OptionalType(torch._C.TensorType.get())


def ensure_bias_attribute(conv: CppModule, twins: list[CppModule]) -> None:
    """Give a conv type without ``bias`` an ``Optional[Tensor]`` one that its convolution reads."""
    if conv.hasattr("bias"):
        return
    register_attribute(conv, "bias", None, _OPTIONAL_TENSOR)
    # Other instances of the type got the slot but no value.
    for twin in twins:
        twin.setattr("bias", None)
    graph = method_graph(conv)
    self_value = next(graph.inputs())
    for node in convolutions_without_bias(graph):
        read = insert_getattr(graph, self_value, "bias", _OPTIONAL_TENSOR, before=node, source=node, debug_name="bias")
        none = node.inputsAt(BIAS_INPUT)
        node.replaceInput(BIAS_INPUT, read.output())
        if is_constant(none) and not none.uses():
            erase_nodes([none.node()])


def convolutions_without_bias(graph: Graph) -> list[Node]:
    return [
        node
        for node in NodeIndex(graph).of_kind(*CONVOLUTION_KINDS)
        if node.inputsSize() > BIAS_INPUT and node.inputsAt(BIAS_INPUT).type().kind() == "NoneType"
    ]


def remove_batch_norm_call(match: Match) -> None:
    bn_call = match.node("bn_out")
    replace_uses(match["bn_out"], match["conv_out"])
    erase_nodes([bn_call])
    _erase_unused_getattr_chain(match["batchnorm"])


def remove_dead_pair(match: Match) -> None:
    erase_nodes([match.node("bn_out"), match.node("conv_out")])
    _erase_unused_getattr_chain(match["batchnorm"])
    _erase_unused_getattr_chain(match["conv"])


def _erase_unused_getattr_chain(value: Value) -> None:
    """Remove ``value``'s ``prim::GetAttr`` and, up the chain, each read left unused."""
    node = value.node()
    while node.kind() == "prim::GetAttr" and not node.output().uses():
        parent = node.input()
        erase_nodes([node])
        node = parent.node()

"""Bring a frozen quantize/dequantize graph into the one shape the lowering's patterns expect.

Takes ``forward`` of the frozen ``debug=True`` model and leaves the same
computation where:

- inference-mode dropouts (``train=False``) are gone: an in-place one the
  reference runs on a dequantized value would keep a linear after it float;
- every quantized value has static parameters (``qparams.analyse``) and
  run-time reads of them are constants;
- constants quantized and dequantized again (the bounds of a requantized
  relu6, ``aten::item(aten::dequantize(aten::quantize_per_tensor(6.0, ...)))``)
  are folded to the float they stand for;
- every use of a dequantized value has its own ``aten::dequantize``, so a
  pattern can own the one it matches, and a dequantize read only for its
  shape (``aten::size`` in an assert) is dropped: the integers have the same;
- shape ops read quantized values: ``select(dequantize(%q))`` becomes
  ``dequantize(select(%q))``, so they move bytes, not floats, and the
  dequantize meets the float op it is for;
- a list that changes after it is built (``append``, as DenseNet builds
  the inputs of its ``cat``) holds float tensors: its quantized elements
  are dequantized as they go in, and the dequantize of the whole list goes;
- an op that reads a quantized tensor directly is one that gives the same
  integers on a plain integer tensor (a reshape, a chunk, a max pool, a
  relu); any other such op reads a dequantized copy instead, and its result
  is quantized again with the input's parameters where the quantized op's
  result would have been quantized::

      %s = aten::sort(%x_q)          becomes   %x = aten::dequantize(%x_q)
                                               %s_f = aten::sort(%x)
                                               %s = aten::quantize_per_tensor(%s_f, <params of %x_q>)
"""

from __future__ import annotations

import torch

from passes.lower_onednn.qparams import (
    KEEPS_INPUT_QPARAMS,
    QUANTIZED_DTYPE,
    SHAPE_OPS,
    QuantizedValues,
    analyse,
    is_unchanging_list,
)
from qgraph.ir import NodeIndex, erase_nodes, insert_constant, insert_op, ivalue, outputs_of, uses_of, walk
from qgraph.ir.graph import Graph, Node

__all__ = ["normalize", "one_dequantize_per_use", "metadata_reads_integers", "INTEGER_KINDS"]

# Ops the integer stage lowers when they read a quantized tensor directly.
INTEGER_KINDS = frozenset({"aten::max_pool2d", "aten::relu", "aten::relu_"})
# Ops that only look at a tensor's metadata, or hand it on unchanged.
_METADATA_OR_FLOW = frozenset(
    {
        "aten::size",
        "aten::dim",
        "aten::len",
        "aten::numel",
        "aten::__is__",
        "aten::__isnot__",
        "prim::device",
        "prim::layout",
        "prim::is_cuda",
        "prim::ListConstruct",
        "prim::TupleConstruct",
        "prim::If",
        "prim::Loop",
        "prim::Return",
        "aten::dequantize",
        "aten::append",
        "prim::RaiseException",
    }
)


_DROPOUTS = frozenset({"aten::dropout", "aten::dropout_", "aten::feature_dropout", "aten::alpha_dropout"})


def _drop_inference_dropouts(index: NodeIndex) -> None:
    """A dropout with ``train=False`` is its input; gone, it no longer splits a quantized island."""
    for node in index.of_kind(*_DROPOUTS):
        train = node.inputsAt(2)
        if train.node().kind() == "prim::Constant" and ivalue(train) is False:
            node.output().replaceAllUsesWith(node.inputsAt(0))


def _fold_constant_quantization(graph: Graph, index: NodeIndex) -> None:
    """``aten::dequantize`` of a quantized constant (or of constants quantized in the graph) becomes a constant."""
    for node in index.of_kind("aten::dequantize"):
        source = node.inputsAt(0).node()
        if source.kind() == "aten::quantize_per_tensor" and all(
            v.node().kind() == "prim::Constant" for v in source.inputs()
        ):
            real, scale, zero_point, dtype = (ivalue(v) for v in source.inputs())
            quantized = torch.quantize_per_tensor(real, scale, zero_point, QUANTIZED_DTYPE[dtype])
        elif source.kind() == "prim::Constant" and node.inputsAt(0).type().kind() == "TensorType":
            if any(use.user.kind() != "aten::item" for use in node.output().uses()):
                continue  # weights stay quantized for the conv and linear patterns
            quantized = source.t("value")
        else:
            continue
        node.output().replaceAllUsesWith(insert_constant(graph, quantized.dequantize(), before=node))


_METADATA = frozenset({"aten::size", "aten::dim", "aten::len", "aten::numel"})


def metadata_reads_integers(index: NodeIndex) -> None:
    """A dequantize read only for its shape (``aten::size`` in an assert) leaves the integers to be read."""
    for node in index.of_kind("aten::dequantize"):
        uses = node.output().uses()
        if uses and all(use.user.kind() in _METADATA for use in uses):
            node.output().replaceAllUsesWith(node.inputsAt(0))


def _sink_dequantize(graph: Graph, index: NodeIndex, table: QuantizedValues) -> None:
    """A shape op reading a dequantized value reads the quantized one, and the dequantize follows it."""
    pending = list(index.of_kind("aten::dequantize"))
    while pending:
        dequantize = pending.pop()
        uses = dequantize.output().uses()
        params = table.get(dequantize.inputsAt(0))
        if params is None or len(uses) != 1:
            continue
        user, offset = uses[0].user, uses[0].offset
        if user.kind() not in SHAPE_OPS or offset != 0 or user.outputsSize() != 1:
            continue
        if user.output().type().kind() != "TensorType":
            continue
        user.replaceInput(0, dequantize.inputsAt(0))
        dequantize.moveAfter(user)
        user.output().replaceAllUsesWith(dequantize.output())
        dequantize.replaceInput(0, user.output())
        table.set(user.output(), params)
        pending.append(dequantize)


def one_dequantize_per_use(graph: Graph, index: NodeIndex) -> None:
    """Give each use of a shared ``aten::dequantize`` its own copy, placed before the user."""
    shared = [node for node in index.of_kind("aten::dequantize") if len(node.output().uses()) > 1]
    for dequantize in shared:
        for user, offset in uses_of(dequantize.output()):
            copy = insert_op(graph, "aten::dequantize", [dequantize.input()], before=user, source=dequantize)
            copy.output().setType(dequantize.output().type())
            user.replaceInput(offset, copy.output())
    erase_nodes(shared)


def _float_changing_lists(graph: Graph, index: NodeIndex, table: QuantizedValues) -> None:
    for node in index.of_kind("aten::dequantize"):
        listed = node.inputsAt(0)
        producer = listed.node()
        if producer.kind() != "prim::ListConstruct" or is_unchanging_list(listed):
            continue
        for user, offset in [(producer, i) for i in range(producer.inputsSize())] + [
            (use.user, 1) for use in listed.uses() if use.user.kind() == "aten::append"
        ]:
            value = user.inputsAt(offset)
            if table.get(value) is not None:
                real = insert_op(graph, "aten::dequantize", [value], before=user, source=user)
                user.replaceInput(offset, real.output())
        node.output().replaceAllUsesWith(listed)
        table.forget(listed)


def _reads_quantized_directly(node: Node, table: QuantizedValues) -> list[int]:
    kind = node.kind()
    if kind in SHAPE_OPS or kind in INTEGER_KINDS or kind in _METADATA_OR_FLOW or kind == "prim::Constant":
        return []
    return [offset for offset, value in enumerate(node.inputs()) if table.get(value) is not None]


def _dequantize_inputs(graph: Graph, node: Node, offsets: list[int], table: QuantizedValues) -> None:
    params = table.get(node.inputsAt(offsets[0]))
    for offset in offsets:
        real = insert_op(graph, "aten::dequantize", [node.inputsAt(offset)], before=node, source=node)
        node.replaceInput(offset, real.output())
    result = outputs_of(node)[0]
    table.forget(result)
    if node.kind() not in KEEPS_INPUT_QPARAMS or params is None:
        return
    users = uses_of(result)
    if not users:
        return
    requantized = insert_op(
        graph,
        "aten::quantize_per_tensor",
        [result, params.scale, params.zero_point, params.dtype],
        after=node,
        source=node,
    )
    for user, offset in users:
        user.replaceInput(offset, requantized.output())
    table.set(requantized.output(), params)


def normalize(graph: Graph) -> QuantizedValues:
    """Rewrite ``graph`` in place as the module docstring says; the parameters of its quantized values."""
    table = analyse(graph)
    index = NodeIndex(graph)
    _drop_inference_dropouts(index)
    _fold_constant_quantization(graph, index)
    _float_changing_lists(graph, index, table)
    torch._C._jit_pass_constant_propagation(graph)
    torch._C._jit_pass_dce(graph)
    for node in list(walk(graph)):
        offsets = _reads_quantized_directly(node, table)
        if offsets:
            _dequantize_inputs(graph, node, offsets, table)
    one_dequantize_per_use(graph, NodeIndex(graph))
    metadata_reads_integers(NodeIndex(graph))
    _sink_dequantize(graph, NodeIndex(graph), table)
    return table

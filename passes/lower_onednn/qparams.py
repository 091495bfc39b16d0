"""Which values of a frozen quantize/dequantize graph are quantized, and with which parameters.

Takes the ``forward`` of a frozen ``debug=True`` model: activations pass
through ``aten::quantize_per_tensor`` with constant scale, zero point and
dtype, shape ops (reshape, chunk, max_pool2d, ...) run on quantized tensors
as they are, and general ops read the input's parameters back at run time::

    %x_q = aten::quantize_per_tensor(%x, 0.031, 59, 13)
    %p_q = aten::max_pool2d(%x_q, ...)
    %scale = aten::q_scale(%p_q)
    %m_q = aten::quantize_per_tensor(%m, %scale, %zp, %dtype)

Every quantized value gets its parameters statically (a ``QParams``), so
the lowering can give them to the oneDNN ops as literals; the run-time reads
become constants::

    %m_q = aten::quantize_per_tensor(%m, 0.031, 59, 13)

Values whose parameters depend on the path taken (``if`` branches, loop
iterations quantized differently) are requantized on each path to one set
of parameters that covers all of them, so they are static too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from qgraph.ir import insert_constant, insert_op, nested_blocks, outputs_of
from qgraph.ir.graph import Block, Graph, Node, Value

__all__ = [
    "QParams",
    "QUINT8",
    "QINT8",
    "QINT32",
    "QUANTIZED_DTYPE",
    "QuantizedValues",
    "analyse",
    "SHAPE_OPS",
    "KEEPS_INPUT_QPARAMS",
    "is_unchanging_list",
]

# torch's ScalarType numbers of the quantized dtypes, as graphs carry them.
QINT8, QUINT8, QINT32 = 12, 13, 14
_PLAIN_DTYPE = {QUINT8: torch.uint8, QINT8: torch.int8, QINT32: torch.int32}
QUANTIZED_DTYPE = {QUINT8: torch.quint8, QINT8: torch.qint8, QINT32: torch.qint32}
_BOUNDS = {QUINT8: (0, 255), QINT8: (-128, 127), QINT32: (-(2**31), 2**31 - 1)}

# Ops that move or select elements without computing on them: on a plain
# integer tensor they give the integers the quantized op gives, with the
# input's parameters.
SHAPE_OPS = frozenset(
    "aten::" + name
    for name in (
        "reshape view flatten transpose permute contiguous chunk split split_with_sizes unbind __getitem__ "
        "select slice narrow squeeze squeeze_ unsqueeze unsqueeze_ repeat expand expand_as detach detach_ "
        "dropout dropout_ feature_dropout clone flip roll t numpy_T movedim unflatten channel_shuffle "
        "native_channel_shuffle pixel_shuffle pixel_unshuffle upsample_nearest1d upsample_nearest2d "
        "upsample_nearest3d view_as reshape_as"
    ).split()
) | {"prim::ListUnpack", "prim::TupleUnpack", "prim::TupleIndex", "prim::unchecked_cast"}
# Ops whose quantized result keeps the input's parameters in the reference, computing or not.
KEEPS_INPUT_QPARAMS = SHAPE_OPS | frozenset(
    "aten::" + name
    for name in (
        "max_pool1d max_pool2d max_pool3d adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d relu relu_ "
        "max min sort topk stack repeat_interleave resize_"
    ).split()
)
# Readers of a list that leave it as it is; a list with any other use may change after it is built.
_LIST_READERS = frozenset(
    {"aten::dequantize", "aten::cat", "aten::stack", "prim::ListUnpack", "aten::__getitem__", "aten::len"}
)
_PARAMETER_READS = {"aten::q_scale": "scale", "aten::q_zero_point": "zero_point", "prim::dtype": "dtype"}


@dataclass(frozen=True)
class QParams:
    """Per-tensor affine quantization: ``real = (q - zero_point) * scale`` in ``dtype``."""

    scale: float
    zero_point: int
    dtype: int  # QUINT8, QINT8 or QINT32

    @property
    def plain_dtype(self) -> torch.dtype:
        """The plain integer dtype that holds the same integers (uint8 for quint8, ...)."""
        return _PLAIN_DTYPE[self.dtype]

    @property
    def bounds(self) -> tuple[int, int]:
        return _BOUNDS[self.dtype]

    def quantize(self, real: float) -> int:
        """The integer ``quantize_per_tensor`` gives for ``real`` (round half to even, saturated)."""
        low, high = self.bounds
        # quantize_per_tensor multiplies by the fp32 inverse scale.
        inverse = float(torch.tensor(1.0, dtype=torch.float32) / torch.tensor(self.scale, dtype=torch.float32))
        return int(min(high, max(low, round(real * inverse) + self.zero_point)))

    def dequantize(self, integer: int) -> float:
        return (integer - self.zero_point) * self.scale

    def covering(self, other: QParams) -> QParams:
        """Parameters of this dtype whose range covers both ranges."""
        low, high = self.bounds
        real_low = min(self.dequantize(low), other.dequantize(other.bounds[0]), 0.0)
        real_high = max(self.dequantize(high), other.dequantize(other.bounds[1]), 0.0)
        scale = max((real_high - real_low) / (high - low), 1e-12)
        zero_point = int(min(high, max(low, low - round(real_low / scale))))
        return QParams(scale, zero_point, self.dtype)


class QuantizedValues:
    """The ``QParams`` of each quantized value of a graph; lists of quantized tensors map to a tuple."""

    def __init__(self) -> None:
        self._params: dict[Value, QParams | tuple[QParams | None, ...]] = {}

    def __contains__(self, value: Value) -> bool:
        return value in self._params

    def get(self, value: Value) -> QParams | None:
        params = self._params.get(value)
        return params if isinstance(params, QParams) else None

    def elements(self, value: Value) -> tuple[QParams | None, ...] | None:
        """The parameters of each element of a list built from quantized values, or None."""
        params = self._params.get(value)
        return params if isinstance(params, tuple) else None

    def set(self, value: Value, params: QParams | tuple[QParams | None, ...]) -> None:
        self._params[value] = params

    def forget(self, value: Value) -> None:
        self._params.pop(value, None)


def is_unchanging_list(value: Value) -> bool:
    """Whether a list value is only read (never appended to or assigned into)."""
    return all(use.user.kind() in _LIST_READERS for use in value.uses())


def _constant(value: Value) -> Any:
    node = value.node()
    return value.toIValue() if node.kind() == "prim::Constant" else None


def _quantize_params(node: Node) -> QParams | None:
    scale, zero_point, dtype = (_constant(node.inputsAt(i)) for i in (1, 2, 3))
    if not isinstance(scale, float) or not isinstance(zero_point, int) or dtype not in _BOUNDS:
        return None
    if not math.isfinite(scale) or scale <= 0:
        return None
    return QParams(scale, zero_point, dtype)


def _element_params(table: QuantizedValues, value: Value) -> QParams | None:
    """Parameters every element of a list value shares, if it has any."""
    single = table.get(value)
    if single is not None:
        return single
    elements = table.elements(value)
    if elements and all(e is not None and e == elements[0] for e in elements):
        return elements[0]
    return None


def _visit(graph: Graph, block: Block, table: QuantizedValues) -> None:
    for node in list(block.nodes()):
        kind = node.kind()
        if kind == "aten::quantize_per_tensor":
            params = _quantize_params(node)
            if params is not None:
                table.set(node.output(), params)
        elif kind in _PARAMETER_READS:
            params = _element_params(table, node.inputsAt(0))
            if params is not None:
                field = getattr(params, _PARAMETER_READS[kind])
                node.output().replaceAllUsesWith(insert_constant(graph, field, before=node))
        elif kind == "prim::ListConstruct" and node.inputsSize() and any(v in table for v in node.inputs()):
            if is_unchanging_list(node.output()):
                table.set(node.output(), tuple(table.get(v) for v in node.inputs()))
        elif kind == "prim::ListUnpack" and table.elements(node.inputsAt(0)) is not None:
            for output, params in zip(outputs_of(node), table.elements(node.inputsAt(0)) or ()):
                if params is not None:
                    table.set(output, params)
        elif kind in KEEPS_INPUT_QPARAMS and node.inputsSize():
            params = _element_params(table, node.inputsAt(0))
            if params is not None:
                for output in outputs_of(node):
                    if "Tensor" in str(output.type()):
                        table.set(output, params)
        elif kind == "prim::If":
            for branch in nested_blocks(node):
                _visit(graph, branch, table)
            _unify_outputs(graph, node, nested_blocks(node), table)
        elif kind == "prim::Loop":
            _visit_loop(graph, node, table)


def _unify_outputs(graph: Graph, node: Node, branches: list[Block], table: QuantizedValues) -> None:
    """Give each ``if`` output the parameters of its branches, requantizing branches that differ."""
    for index, output in enumerate(outputs_of(node)):
        # A branch that always raises yields an uninitialized value; only the others count.
        live = [
            (branch, outputs_of(branch)[index])
            for branch in branches
            if outputs_of(branch)[index].node().kind() != "prim::Uninitialized"
        ]
        params = [table.get(value) for _, value in live]
        if not params or any(p is None for p in params):
            continue
        known = [p for p in params if p is not None]
        common = known[0]
        for other in known[1:]:
            if other != common:
                common = common.covering(other)
        for (branch, value), own in zip(live, params):
            if own is not None and own != common:
                _requantize_block_output(graph, branch, index, value, common, table)
        table.set(output, common)


def _requantize_block_output(
    graph: Graph, block: Block, index: int, value: Value, params: QParams, table: QuantizedValues
) -> None:
    ret = block.returnNode()
    real = insert_op(graph, "aten::dequantize", [value], before=ret)
    requantized = insert_op(
        graph, "aten::quantize_per_tensor", [real.output(), params.scale, params.zero_point, params.dtype], before=ret
    )
    ret.replaceInput(index, requantized.output())
    table.set(requantized.output(), params)


def _visit_loop(graph: Graph, node: Node, table: QuantizedValues) -> None:
    body = nested_blocks(node)[0]
    carried_in = list(node.inputs())[2:]
    body_params = list(body.inputs())[1:]
    for entry, param in zip(carried_in, body_params):
        params = table.get(entry)
        if params is not None:
            table.set(param, params)
    _visit(graph, body, table)
    for index, (entry, param, output) in enumerate(zip(carried_in, body_params, outputs_of(node))):
        params = table.get(entry)
        if params is None:
            continue
        handed_back = outputs_of(body)[index + 1]
        back = table.get(handed_back)
        if back is None:
            # The body hands back a float value: the carried value is float after the first iteration.
            table.forget(param)
            continue
        if back != params:
            _requantize_block_output(graph, body, index + 1, handed_back, params, table)
        table.set(output, params)


def analyse(graph: Graph) -> QuantizedValues:
    """The quantized values of ``graph`` with their parameters; run-time parameter reads become constants.

    Reads of parameters that cannot be known statically stay in the graph.
    """
    table = QuantizedValues()
    _visit(graph, graph.block(), table)
    return table

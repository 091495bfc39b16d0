"""Keep in float the convs that fusion would turn into a quantized kernel known to corrupt memory.

Runs on finalize's ``forward`` after ``insert_prepack_unpack``, right before
fusion: every conv that a conv entry of the fusion table would turn into
``quantized::conv{2,3}d[_relu]`` is checked against
``qgraph.quant.kernels.groupwise_conv_is_unsafe`` (fbgemm's groupwise path:
2 or 4 channels per group, a channel count above 8 that is not a multiple
of 8, 3x3 kernels, padding 1, ...). Such a conv is tagged to stay float
(``tag_float_op``, category "kept in float by a safety rule", standing for
the quantized op it would have become); the fusion table's conv entries
skip tagged convs, so the island stays ``dequantize -> conv -> quantize``
and, frozen::

    %w_q, %b = quantized::conv2d_unpack(%packed)
    %w = aten::dequantize(%w_q)
    %x = aten::dequantize(%x_q)
    %y = aten::conv2d(%x, %w, %b, [1, 1], [1, 1], [1, 1], 6)
    %y_q = aten::quantize_per_tensor(%y, %scale, %zp, 13)

The weight's shape is read from its module attribute (through the quantize
op feeding the prepack), or from the type a trace recorded; the conv's
stride, padding, dilation and groups from constants or attributes.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from passes.lower.quant_fusion.builders import conv_node
from passes.lower.quant_fusion.tables import CONV_FUSIONS
from qgraph.ir import (
    CppModule,
    NodeIndex,
    Value,
    as_cpp,
    getattr_path,
    inputs_of,
    ivalue,
    method_graph,
    resolve_path,
    tensor_sizes,
)
from qgraph.pattern import Match, Rewrite, find_matches
from qgraph.quant.float_ops import SAFETY_RULE, is_tagged, tag_float_op
from qgraph.quant.kernels import groupwise_conv_is_unsafe, groupwise_conv_reason

__all__ = ["keep_unsafe_convs_in_float"]

_UNKNOWN = object()
_QUANTIZED_OP = re.compile(r"quantized::\w+")
_QUANTIZE_KINDS = ("aten::quantize_per_tensor", "aten::quantize_per_channel")
# conv(x, w, b, stride, padding, dilation, groups)
_STRIDE, _PADDING, _DILATION, _GROUPS = 3, 4, 5, 6


def _static(module: CppModule, value: Value) -> Any:
    """What ``value`` holds whatever the input: a constant, a module attribute, or a list of those."""
    node = value.node()
    if node.kind() == "prim::Constant":
        return ivalue(value)
    if node.kind() == "prim::ListConstruct":
        items = [_static(module, item) for item in inputs_of(node)]
        return _UNKNOWN if any(item is _UNKNOWN for item in items) else items
    path = getattr_path(value)
    if not path:
        return _UNKNOWN
    try:
        return resolve_path(module, path)
    except RuntimeError:
        return _UNKNOWN


def _weight_shape(module: CppModule, packed: Value) -> tuple[int, ...] | None:
    prepack = packed.node()
    if not prepack.kind().endswith("_prepack"):
        return None
    weight = prepack.inputsAt(0)
    while weight.node().kind() in _QUANTIZE_KINDS:
        weight = weight.node().inputsAt(0)
    sizes = tensor_sizes(weight.type())
    if sizes is not None and all(size is not None for size in sizes):
        return tuple(int(size) for size in sizes if size is not None)
    tensor = _static(module, weight)
    return tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else None


def _is_unsafe(module: CppModule, match: Match) -> tuple[int, ...] | None:
    """The weight shape of the match's conv when fbgemm's groupwise kernel would corrupt memory, else None."""
    conv = conv_node(match)
    shape = _weight_shape(module, match["packed_params"])
    parameters = [_static(module, conv.inputsAt(i)) for i in (_STRIDE, _PADDING, _DILATION, _GROUPS)]
    if shape is None or any(p is _UNKNOWN for p in parameters):
        return None
    stride, padding, dilation, groups = parameters
    if not isinstance(groups, int) or not all(isinstance(p, list) for p in (stride, padding, dilation)):
        return None
    return shape if groupwise_conv_is_unsafe(shape, stride, padding, dilation, groups, False) else None


def _quantized_op(entry: Rewrite) -> str:
    found = _QUANTIZED_OP.search(str(entry.replacement))
    if found is None:
        raise ValueError(f"fusion entry {entry.name!r} names no quantized op")
    return found.group()


def keep_unsafe_convs_in_float(module: Any, method_name: str = "forward") -> int:
    """Tag the convs of ``module.<method_name>`` fusion must leave float; returns how many.

    ``module`` is a ScriptModule (or its ``._c``) after ``insert_prepack_unpack``;
    only node attributes change.
    """
    module_c = as_cpp(module)
    graph = method_graph(module_c, method_name)
    index = NodeIndex(graph)
    kept = 0
    for entry in CONV_FUSIONS:
        quantized_op = _quantized_op(entry)
        for match in find_matches(graph, entry.pattern, index):
            conv = conv_node(match)
            shape = None if is_tagged(conv) else _is_unsafe(module_c, match)
            if shape is not None:
                tag_float_op(conv, SAFETY_RULE, groupwise_conv_reason(shape), stands_for=quantized_op)
                kept += 1
    return kept

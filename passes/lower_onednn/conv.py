"""Quantized conv2d islands become ``onednn::qconv2d_pointwise``, with their epilogue as post-ops.

Takes the graph after ``epilogues``: a conv2d between dequantized input and
weight, an optional activation or residual add (+ relu), and a quantize::

    %x = aten::dequantize(%x_q)
    %w = aten::dequantize(%w_q)                       # %w_q: a QInt8 constant
    %y = aten::conv2d(%x, %w, %b, [1, 1], [1, 1], [1, 1], 1)
    %a = aten::hardswish(%y)
    %y_q = aten::quantize_per_tensor(%a, 0.05, 3, 13)

and leaves one op on plain uint8 tensors, its weight packed on the first
call (``emit.Emitter.packed_weight``)::

    %y_q = onednn::qconv2d_pointwise(%x_q, 0.02, 0, %packed, %w_scales, %w_zero_points, %b',
                                     [1, 1], [1, 1], [1, 1], 1, 0.05, 3, None, "hardswish", [], "")

With a residual add the op is the ``.binary`` overload with a ``sum``
post-op (and ``relu`` after it); it writes its result into the accumulator,
so an accumulator something else still reads, or that another tensor
aliases, is cloned first. The accumulator must have the output's shape: an
add that broadcasts is computed unfused, chosen at run time.

Unpadded dense convs run with input zero point 0: the zero point's
contribution goes into the bias (``weights.folded_bias``), which saves
oneDNN its run-time compensation. Padded convs keep the zero point (with
it folded, the padding would have to be the zero point, an extra copy of
the input that costs as much as the compensation), and so do depthwise
convs (their compensation is cheap).
"""

from __future__ import annotations

import functools

import torch

from passes.lower_onednn.context import Lowering
from passes.lower_onednn.emit import Emitter
from passes.lower_onednn.islands import Island, OnednnCall, emit_island, island_rewrites, operands_problem
from passes.lower_onednn.qparams import QParams
from passes.lower_onednn.weights import Int8Weight, folded_bias, int8_weight
from qgraph.ir.graph import Graph, Node, Value
from qgraph.pattern import Match, Rewrite

__all__ = ["conv_rewrites", "conv_is_lowerable"]

_HEAD = """%x = aten::dequantize(%x_q)
    %w = aten::dequantize(%w_q)
    %y = aten::conv2d(%x, %w, %b, %stride, %padding, %dilation, %groups)"""
_HEAD_INPUTS = "%x_q, %w_q, %b, %stride, %padding, %dilation, %groups"
_OP = "onednn::qconv2d_pointwise"
_INT = torch._C.IntType.get()
_INT_LIST = torch._C.ListType.ofInts()


def conv_is_lowerable(match: Match, lowering: Lowering) -> str | None:
    """Why the conv of ``match`` cannot be a oneDNN op, or None when it can."""
    problem = operands_problem(match, lowering, 4)
    if problem is not None:
        return problem
    for name in ("stride", "padding", "dilation"):
        value = match.constant(name, None)
        if not isinstance(value, list) or len(value) != 2:
            return f"its {name} is not a constant pair of ints ('same'/'valid' padding strings included)"
    if not isinstance(match.constant("groups", None), int):
        return "its group count is not a constant"
    return None


def _is_depthwise(weight: Int8Weight, groups: int) -> bool:
    return groups > 1 and weight.values.shape[1] == 1 and groups == weight.out_channels


def _lower(lowering: Lowering, island: Island, graph: Graph, match: Match, before: Node) -> list[Value]:
    e = lowering.emitter(before, source=match.node("y"))
    x = match["x_q"]
    x_params = lowering.known(x)
    weight = int8_weight(match["w_q"])
    assert isinstance(weight, Int8Weight), weight  # the filter refused other weights
    stride, padding, dilation = (match.constant(name) for name in ("stride", "padding", "dilation"))
    groups = match.constant("groups")
    bias = match.constant("b")
    output = QParams(match.constant("scale"), match.constant("zero_point"), match.constant("dtype"))
    x_zero_point = x_params.zero_point
    # oneDNN convs copy any other layout to channels-last on every call.
    lowering.channels_last.add(x)
    if x_zero_point and not _is_depthwise(weight, groups) and not any(padding):
        bias = folded_bias(bias, weight, x_params.scale, x_zero_point)
        x_zero_point = 0
    geometry = [stride, padding, dilation, groups]
    w_scales = e.constant(weight.scales)
    packed = e.packed_weight(
        lowering.new_packed_attribute(),
        "onednn::qconv_prepack",
        [weight.values, w_scales, x_params.scale, x_zero_point, *geometry],
        x,
    )
    w_zero_points = e.constant(torch.zeros(weight.out_channels, dtype=torch.long))
    call = OnednnCall(_OP, [x, x_params.scale, x_zero_point, packed, w_scales, w_zero_points], bias, geometry)
    return emit_island(lowering, e, match, island, call, output, lambda: _output_size(e, x, weight, *geometry[:3]))


def _output_size(
    e: Emitter, x: Value, weight: Int8Weight, stride: list[int], padding: list[int], dilation: list[int]
) -> Value:
    """``[N, C_out, H_out, W_out]`` of the conv for input ``x``, computed at run time."""
    sizes = [e.op("aten::size", x, 0, type_=_INT), weight.out_channels]
    for dim, kernel in zip((2, 3), weight.values.shape[2:]):
        i = dim - 2
        extent = e.op("aten::size", x, dim, type_=_INT)
        shrunk = e.op("aten::add", extent, 2 * padding[i] - dilation[i] * (kernel - 1) - 1, type_=_INT)
        steps = e.op("aten::floordiv", shrunk, stride[i], type_=_INT)
        sizes.append(e.op("aten::add", steps, 1, type_=_INT))
    return e.op("prim::ListConstruct", *sizes, type_=_INT_LIST)


def conv_rewrites(lowering: Lowering) -> tuple[Rewrite, ...]:
    """The conv island patterns, most specific first, lowering into ``lowering``."""
    return island_rewrites(
        "conv2d",
        _HEAD,
        _HEAD_INPUTS,
        "aten::conv2d",
        functools.partial(conv_is_lowerable, lowering=lowering),
        lowering,
        lambda island: functools.partial(_lower, lowering, island),
    )

"""Quantized linear islands become ``onednn::qlinear_pointwise``, with their epilogue as post-ops.

Takes the graph after ``epilogues``: a linear between dequantized input and
weight, an optional activation (gelu, leaky_relu and tanh too) or residual
add (+ relu), and a quantize::

    %x = aten::dequantize(%x_q)
    %w = aten::dequantize(%w_q)                       # %w_q: a QInt8 constant
    %y = aten::linear(%x, %w, %b)
    %e = aten::gelu(%y, "none")
    %y_q = aten::quantize_per_tensor(%e, 0.05, 3, 13)

and leaves one op on plain uint8 tensors of any rank (the last dim is the
features), its weight packed on the first call::

    %y_q = onednn::qlinear_pointwise(%x_q, 0.02, 0, %packed, %w_scales, %w_zero_points, %b',
                                     0.05, 3, None, "gelu", [], "none")

The input zero point always goes into the bias (a linear has no padding).
A residual add becomes the ``.binary`` overload with a ``sum`` post-op into
a uint8 accumulator of the output's shape (checked at run time; an add that
broadcasts is computed unfused).
"""

from __future__ import annotations

import functools

import torch

from passes.lower_onednn.context import Lowering
from passes.lower_onednn.islands import Island, OnednnCall, emit_island, island_rewrites, operands_problem
from passes.lower_onednn.qparams import QParams
from passes.lower_onednn.weights import Int8Weight, folded_bias, int8_weight
from qgraph.ir.graph import Graph, Node, Value
from qgraph.pattern import Match, Rewrite

__all__ = ["linear_rewrites", "linear_is_lowerable"]

_HEAD = """%x = aten::dequantize(%x_q)
    %w = aten::dequantize(%w_q)
    %y = aten::linear(%x, %w, %b)"""
_HEAD_INPUTS = "%x_q, %w_q, %b"
_OP = "onednn::qlinear_pointwise"
_INT_LIST = torch._C.ListType.ofInts()


def linear_is_lowerable(match: Match, lowering: Lowering) -> str | None:
    """Why the linear of ``match`` cannot be a oneDNN op, or None when it can."""
    return operands_problem(match, lowering, 2)


def _lower(lowering: Lowering, island: Island, graph: Graph, match: Match, before: Node) -> list[Value]:
    e = lowering.emitter(before, source=match.node("y"))
    x = match["x_q"]
    x_params = lowering.known(x)
    weight = int8_weight(match["w_q"])
    assert isinstance(weight, Int8Weight), weight  # the filter refused other weights
    output = QParams(match.constant("scale"), match.constant("zero_point"), match.constant("dtype"))
    bias = match.constant("b")
    if x_params.zero_point:
        bias = folded_bias(bias, weight, x_params.scale, x_params.zero_point)
    w_scales = e.constant(weight.scales)
    packed = e.packed_weight(lowering.new_packed_attribute(), "onednn::qlinear_prepack", [weight.values], x)
    w_zero_points = e.constant(torch.zeros(weight.out_channels, dtype=torch.long))
    call = OnednnCall(_OP, [x, x_params.scale, 0, packed, w_scales, w_zero_points], bias, [])

    def output_size() -> Value:
        # The input's leading dims and the output features.
        leading = e.op("aten::slice", e.op("aten::size", x, type_=_INT_LIST), 0, -1, 1, type_=_INT_LIST)
        return e.op("aten::add", leading, [weight.out_channels], type_=_INT_LIST)

    return emit_island(lowering, e, match, island, call, output, output_size)


def linear_rewrites(lowering: Lowering) -> tuple[Rewrite, ...]:
    """The linear island patterns, most specific first, lowering into ``lowering``."""
    return island_rewrites(
        "linear",
        _HEAD,
        _HEAD_INPUTS,
        "aten::linear",
        functools.partial(linear_is_lowerable, lowering=lowering),
        lowering,
        lambda island: functools.partial(_lower, lowering, island),
    )

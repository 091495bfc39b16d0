"""Weights of the oneDNN ops: plain int8 values, fp32 scales, and a bias that absorbs the input zero point.

After freezing, a conv or linear weight of the quantize/dequantize graph is
a quantized constant read through ``aten::dequantize``::

    %w_q : QInt8(16, 8, 3, 3) = prim::Constant[value=<Tensor>]()
    %w = aten::dequantize(%w_q)
    %y = aten::conv2d(%x, %w, %b, ...)

oneDNN takes symmetric int8 weights (zero point 0) with one fp32 scale per
output channel; ``int8_weight`` reads those from the constant, or says why
it cannot.

oneDNN computes ``sum((x - x_zp) * w)`` with a run-time compensation when
the input zero point is not 0, which costs a fixed setup per call plus work
proportional to the weight. With no padding the compensation is a constant
per output channel, so it goes into the bias once::

    y = x_scale * w_scale * sum(x * w) - x_scale * x_zp * w_scale * sum(w) + bias
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qgraph.ir.graph import Value

__all__ = ["Int8Weight", "int8_weight", "folded_bias"]


@dataclass(frozen=True)
class Int8Weight:
    values: torch.Tensor  # int8, the quantized weight's integers
    scales: torch.Tensor  # fp32, one per output channel (dim 0)

    @property
    def out_channels(self) -> int:
        return self.values.shape[0]


def int8_weight(value: Value) -> Int8Weight | str:
    """The int8 weight behind ``aten::dequantize(value)``, or the reason oneDNN cannot take it."""
    node = value.node()
    if node.kind() != "prim::Constant" or node.kindOf("value") != "t":
        return "its weight is computed at run time, not a constant"
    weight = node.t("value")
    if not weight.is_quantized or weight.dtype != torch.qint8:
        return f"its weight is {weight.dtype}, oneDNN takes qint8 weights"
    scheme = weight.qscheme()
    if scheme in (torch.per_channel_affine, torch.per_channel_symmetric):
        if weight.q_per_channel_axis() != 0:
            return "its weight is quantized per channel along a dim other than the output channels"
        if bool(weight.q_per_channel_zero_points().ne(0).any()):
            return "its weight has non-zero zero points; oneDNN takes symmetric weights"
        scales = weight.q_per_channel_scales().to(torch.float32)
    elif scheme in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        if weight.q_zero_point() != 0:
            return "its weight has a non-zero zero point; oneDNN takes symmetric weights"
        scales = torch.full((weight.shape[0],), weight.q_scale(), dtype=torch.float32)
    else:
        return f"its weight is quantized with {scheme}"
    return Int8Weight(weight.int_repr().contiguous(), scales.contiguous())


def folded_bias(bias: torch.Tensor | None, weight: Int8Weight, x_scale: float, x_zero_point: int) -> torch.Tensor:
    """``bias`` minus the input zero point's contribution, so the op can run with zero point 0."""
    sums = weight.values.flatten(1).to(torch.float64).sum(1)
    shift = x_scale * x_zero_point * sums * weight.scales.to(torch.float64)
    base = bias.detach().to(torch.float64) if bias is not None else torch.zeros_like(shift)
    return (base - shift).to(torch.float32)

"""Fuse ``dequantize -> float op -> quantize`` into PyTorch's quantized ops.

After quant-dequant insertion every quantized value reaches its float op
through ``aten::dequantize`` and the op's result is quantized again; after
``insert_prepack_unpack`` weights reach it through a prepack / unpack pair.
This pass replaces each such island with the quantized op that computes it
on int8 tensors directly::

    %a = aten::dequantize(%a_q)
    %w_q, %b = quantized::conv2d_unpack(%packed)
    %w = aten::dequantize(%w_q)
    %r = aten::conv2d(%a, %w, %b, %stride, %padding, %dilation, %groups)
    %r_relu = aten::relu(%r)
    %r_q = aten::quantize_per_tensor(%r_relu, %scale, %zp, %dtype)

becomes::

    %r_q = quantized::conv2d_relu(%a_q, %packed, %scale, %zp)

Ops come in four families (``tables.py``):

- ops with a packed weight and observed output qparams (conv, conv
  transpose, linear), optionally fused with a following relu;
- binary ops (add, mul), tensor-tensor or tensor-scalar, with relu variants
  and in-place forms (``quantized::add_scalar_out`` writes into its input);
- ops whose output has its own observed qparams (cat, batch_norm,
  hardswish, elu, layer/group/instance norm);
- ops that run unchanged on the quantized tensor: those whose output keeps
  the input's qparams (pooling, mean, upsample, clamp, hardtanh,
  leaky_relu) and those with fixed output qparams (sigmoid, hardsigmoid,
  tanh).

Dynamic quantization has its own table: a linear whose activation is
quantized at run time (``aten::_choose_qparams_per_tensor``) becomes
``quantized::linear_dynamic``, an fp16 linear
``quantized::linear_dynamic_fp16``. A conv tagged to stay float
(``unsafe_convs.py``) is not fused.
"""

from __future__ import annotations

from passes.lower.quant_fusion.tables import DYNAMIC_QUANT_FUSION, STATIC_QUANT_FUSION
from qgraph.ir import Graph
from qgraph.pattern import Rewrite, rewrite_present
from qgraph.quant.quant_type import QuantType, check_quant_type

__all__ = ["quant_fusion", "quant_fusion_table"]


def quant_fusion_table(quant_type: QuantType) -> list[Rewrite]:
    """The fusion table for ``quant_type`` (STATIC or DYNAMIC)."""
    return STATIC_QUANT_FUSION if check_quant_type(quant_type) == QuantType.STATIC else DYNAMIC_QUANT_FUSION


def quant_fusion(graph: Graph, quant_type: QuantType = QuantType.STATIC) -> int:
    """Replace ``dequantize -> op -> quantize`` islands of ``graph`` with quantized ops, in place.

    Returns the number of rewrites made. Weights must already go through
    ``insert_prepack_unpack``.
    """
    if not isinstance(graph, Graph):
        raise TypeError(f"quant_fusion expects a torch._C.Graph, got {type(graph).__name__}")
    return rewrite_present(graph, quant_fusion_table(quant_type))

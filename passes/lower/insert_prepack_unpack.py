"""Route quantized conv/linear weights through a prepack/unpack pair.

Quantized kernels take their weight (and bias) as one packed-params object,
built by ``quantized::*_prepack``. This pass puts the prepack on the weight
path and unpacks it straight away, so the float op still sees a weight and
bias and the graph computes exactly what it did before::

    %w = aten::dequantize(%w_q)
    %y = aten::linear(%x, %w, %b)

becomes::

    %packed = quantized::linear_prepack(%w_q, %b)
    %w_q2, %b2 = quantized::linear_unpack(%packed)
    %w = aten::dequantize(%w_q2)
    %y = aten::linear(%x, %w, %b2)

Quant fusion then swallows ``unpack -> dequantize -> op`` into the quantized
op that takes ``%packed``, and once the model is frozen the prepack has only
constant inputs, so ``fold_prepacking`` runs it once and stores the result.

Weights saturated to fp16 (``aten::_saturate_weight_to_fp16``, dynamic fp16
quantization) get the fp16 prepack/unpack pair instead. Covered ops:
``aten::linear``, ``aten::conv{1,2,3}d``, ``aten::conv_transpose{1,2}d``.
Transposed convolutions take (output_padding, groups, dilation) while their
prepack takes (output_padding, dilation, groups); the table spells that out.
"""

from __future__ import annotations

from qgraph.ir import Graph
from qgraph.pattern import Rewrite, rewrite_present

__all__ = ["PREPACK_UNPACK", "insert_prepack_unpack"]


def _packed_type(op: str) -> str:
    # The replacement's inputs parse as Tensor, so the packed-params type
    # cannot be inferred from the schema and is written out; 1-d convs use
    # the 2-d kernels' params.
    kind = "Conv3d" if op.endswith("3d") else "Conv2d"
    return f"__torch__.torch.classes.quantized.{kind}PackedParamsBase"


def _weighted_rewrite(op: str, args: str, prepack_args: str) -> Rewrite:
    """``op``'s weight goes through ``<op>_prepack`` / ``<op>_unpack``; ``prepack_args``
    is the order the prepack op takes the op's own arguments in."""
    header = f"graph(%a_dequant, %w_quant, %b, {args}):"
    return Rewrite(
        name=f"{op}_prepack_unpack",
        pattern=f"""{header}
            %w_dequant = aten::dequantize(%w_quant)
            %r = aten::{op}(%a_dequant, %w_dequant, %b, {args})
            return (%r)""",
        replacement=f"""{header}
            %packed_params : {_packed_type(op)} = quantized::{op}_prepack(%w_quant, %b, {prepack_args})
            %w_quant_unpacked : Tensor, %b_unpacked : Tensor? = quantized::{op}_unpack(%packed_params)
            %w_dequant = aten::dequantize(%w_quant_unpacked)
            %r = aten::{op}(%a_dequant, %w_dequant, %b_unpacked, {args})
            return (%r)""",
    )


_CONV_ARGS = "%stride, %padding, %dilation, %groups"
_CONV_TRANSPOSE_ARGS = "%stride, %padding, %output_padding, %groups, %dilation"


def _conv_rewrite(op: str) -> Rewrite:
    return _weighted_rewrite(op, _CONV_ARGS, _CONV_ARGS)


def _conv_transpose_rewrite(op: str) -> Rewrite:
    # The prepack op takes dilation before groups; conv_transpose itself the other way round.
    return _weighted_rewrite(op, _CONV_TRANSPOSE_ARGS, "%stride, %padding, %output_padding, %dilation, %groups")


# Order follows the reference: linear (int8, then fp16), then the convolutions.
PREPACK_UNPACK = [
    Rewrite(
        name="linear_prepack_unpack",
        pattern="""graph(%a_dequant, %w_quant, %b):
            %w_dequant = aten::dequantize(%w_quant)
            %r = aten::linear(%a_dequant, %w_dequant, %b)
            return (%r)""",
        replacement="""graph(%a_dequant, %w_quant, %b):
            %packed_params : __torch__.torch.classes.quantized.LinearPackedParamsBase = quantized::linear_prepack(%w_quant, %b)
            %w_quant_unpacked : Tensor, %b_unpacked : Tensor? = quantized::linear_unpack(%packed_params)
            %w_dequant = aten::dequantize(%w_quant_unpacked)
            %r = aten::linear(%a_dequant, %w_dequant, %b_unpacked)
            return (%r)""",
    ),
    Rewrite(
        name="linear_fp16_prepack_unpack",
        pattern="""graph(%w, %a, %b):
            %w_fp16 = aten::_saturate_weight_to_fp16(%w)
            %r = aten::linear(%a, %w_fp16, %b)
            return (%r)""",
        replacement="""graph(%w, %a, %b):
            %packed_params : __torch__.torch.classes.quantized.LinearPackedParamsBase = quantized::linear_prepack_fp16(%w, %b)
            %w_unpacked : Tensor, %b_unpacked : Tensor? = quantized::linear_unpack_fp16(%packed_params)
            %r = aten::linear(%a, %w_unpacked, %b_unpacked)
            return (%r)""",
    ),
    _conv_rewrite("conv1d"),
    _conv_rewrite("conv2d"),
    _conv_rewrite("conv3d"),
    _conv_transpose_rewrite("conv_transpose1d"),
    _conv_transpose_rewrite("conv_transpose2d"),
]


def insert_prepack_unpack(graph: Graph) -> int:
    """Insert prepack/unpack on every quantized conv/linear weight of ``graph``, in place.

    Returns the number of weights rewritten. Nested blocks are included.
    """
    if not isinstance(graph, Graph):
        raise TypeError(f"insert_prepack_unpack expects a torch._C.Graph, got {type(graph).__name__}")
    return rewrite_present(graph, PREPACK_UNPACK)

"""The nodes quantize / dequantize insertion builds: a dequantize per use, a run-time quantization chain."""

from __future__ import annotations

import torch

from qgraph.ir import TENSOR, Graph, Node, NodeBuilder, Value

__all__ = ["dequantize", "choose_qparams_quant_dequant", "insert_dequantize_per_use"]

_FLOAT = torch._C.FloatType.get()
_INT = torch._C.IntType.get()


def dequantize(builder: NodeBuilder, quantized: Value, like: Value, index: int = 0) -> Node:
    """``aten::dequantize(quantized)`` named ``<like>.dequant.<index>`` and typed as ``like``."""
    return builder.op("aten::dequantize", [quantized], name=f"{like.debugName()}.dequant.{index}", type_=like.type())


def choose_qparams_quant_dequant(builder: NodeBuilder, value: Value, dtype: Value, quantize: str) -> Node:
    """Run-time qparams for ``value``: choose_qparams, quantize, dequantize (returned)."""
    # reduce_range is True as in the reference (qnnpack ignores it).
    reduce_range = builder.constant(True)
    choose = builder.op("aten::_choose_qparams_per_tensor", [value, reduce_range], n_outputs=2)
    scale, zero_point = choose.outputsAt(0), choose.outputsAt(1)
    scale.setType(_FLOAT)
    scale.setDebugName(f"{value.debugName()}.scale")
    zero_point.setType(_INT)
    zero_point.setDebugName(f"{value.debugName()}.zero_point")
    quant = builder.op(quantize, [value, scale, zero_point, dtype], name=f"{value.debugName()}.quant", type_=TENSOR)
    return dequantize(builder, quant.output(), value)


def insert_dequantize_per_use(graph: Graph, quantized: Value, original: Value) -> list[Value]:
    """Give each use of ``original`` its own ``dequantize(quantized)`` placed right before the user."""
    outputs = []
    for index, use in enumerate(list(original.uses())):
        dequant = dequantize(NodeBuilder(graph, before=use.user), quantized, original, index)
        use.user.replaceInput(use.offset, dequant.output())
        outputs.append(dequant.output())
    return outputs

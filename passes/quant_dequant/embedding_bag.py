"""Embedding bags quantized weight-only, over a prepacked weight.

An embedding_bag weight observed by a ``PlaceholderObserver`` whose
``custom_op_name`` is ``embedding_bag_byte`` / ``embedding_bag_4bit``
turns the bag into ``quantized::embedding_bag_{byte,4bit}_rowwise_offsets``
over ``quantized::embedding_bag_{byte,4bit}_prepack`` of the float weight::

    %y = aten::embedding_bag(%weight, %indices, %offsets, %false, %mode, ...)

becomes::

    %packed = quantized::embedding_bag_byte_prepack(%weight)
    %y = quantized::embedding_bag_byte_rowwise_offsets(%packed, %indices, %offsets, %false, %mode, ...)

Those kernels always sum, whatever their mode argument says: a
``mode="mean"`` bag divides their result by the bag sizes (the reference
returns the sum), and a ``mode="max"`` bag keeps its float weight and op.
"""

from __future__ import annotations

from typing import Optional

import torch

from qgraph.ir import TENSOR, Graph, NodeBuilder, Value, erase_nodes, inputs_of, insert_scripted, ivalue, outputs_of
from qgraph.quant.observed_values import aten_name, call_name

__all__ = ["EMBEDDING_BAG_OPS", "EMBEDDING_BAG_MODES", "quantize_embedding_bag"]

# Embedding-bag weight-only quantization: observer custom_op_name -> (prepack op,
# quantized op, extra prepack arguments). 4-bit prepacking takes
# (optimized_qparams=False, nbins=200, ratio=0.16 as a float32) like the reference.
EMBEDDING_BAG_OPS = {
    "embedding_bag_byte": (
        "quantized::embedding_bag_byte_prepack",
        "quantized::embedding_bag_byte_rowwise_offsets",
        (),
    ),
    "embedding_bag_4bit": (
        "quantized::embedding_bag_4bit_prepack",
        "quantized::embedding_bag_4bit_rowwise_offsets",
        (False, 200, float(torch.tensor(0.16, dtype=torch.float32))),
    ),
}


# EmbeddingBag modes: F.embedding_bag names them, aten::embedding_bag numbers them.
EMBEDDING_BAG_MODES = {"sum": 0, "mean": 1, "max": 2}


def _bag_mean(
    sums: torch.Tensor, indices: torch.Tensor, offsets: Optional[torch.Tensor], include_last_offset: bool
) -> torch.Tensor:
    """``sums`` of each bag divided by its size (empty bags stay 0)."""
    assert offsets is not None, "quantized embedding_bag needs offsets"
    if include_last_offset:
        sizes = offsets[1:] - offsets[:-1]
    else:
        end = torch.full([1], indices.numel(), dtype=offsets.dtype)
        sizes = torch.cat([offsets[1:], end]) - offsets
    return sums / sizes.clamp(min=1).to(sums.dtype).unsqueeze(1)


def quantize_embedding_bag(graph: Graph, cursor: NodeBuilder, weight: Value, op_name: str) -> None:
    """Replace the embedding_bag reading ``weight`` with its prepacked, quantized form."""
    if op_name not in EMBEDDING_BAG_OPS:
        raise RuntimeError(
            "embedding_bag weight-only quantization supports custom_op_name in "
            f"{sorted(EMBEDDING_BAG_OPS)}, got {op_name!r}"
        )
    prepack_op, quantized_op, extra = EMBEDDING_BAG_OPS[op_name]
    bag = None
    for use in weight.uses():
        if (use.user.kind() == "aten::embedding_bag" and use.offset == 0) or (
            call_name(use.user) == "embedding_bag" and use.offset == 2
        ):
            bag = use.user
    if bag is None:
        raise RuntimeError(
            f"%{weight.debugName()} is observed as an embedding_bag weight but no embedding_bag reads it"
        )
    args = inputs_of(bag)
    is_aten = aten_name(bag) == "embedding_bag"
    expected_inputs = 9 if is_aten else 12
    if len(args) != expected_inputs:
        name = "aten::embedding_bag" if is_aten else "F.embedding_bag"
        raise RuntimeError(f"expected {name} to have {expected_inputs} inputs, got {len(args)}")
    mode = _embedding_bag_mode(args[4] if is_aten else args[7])
    if mode == EMBEDDING_BAG_MODES["max"]:
        # The quantized kernels only sum; a max bag keeps its float weight.
        return
    padding_idx = args[-1]
    if padding_idx.type().kind() != "NoneType":
        raise RuntimeError("Expected aten::embedding_bag padding_idx input to be None")
    extra_values = [cursor.constant(v) for v in extra]
    prepack = cursor.op(prepack_op, [weight, *extra_values], type_=TENSOR)
    none = cursor.constant(None)
    pruned = cursor.constant(False)
    mode_value = cursor.constant(mode)
    if is_aten:
        # indices, offsets, scale_grad_by_freq, mode, pruned_weights (sparse is a
        # training flag; at inference its slot says whether rows were pruned), per_sample_weights
        indices, offsets = args[1], args[2]
        q_args = [prepack.output(), indices, offsets, args[3], mode_value, pruned, args[6]]
    else:
        indices, offsets = args[1], args[3]
        q_args = [prepack.output(), indices, offsets, args[6], mode_value, pruned, args[9]]
    include_last_offset = args[-2]
    q_args += [none, include_last_offset]
    quantized = graph.create(quantized_op, q_args, 1)
    quantized.output().setType(TENSOR)
    if is_aten:
        quantized.insertBefore(bag)
        for extra_output in outputs_of(bag)[1:]:
            if extra_output.uses():
                raise RuntimeError("Expected aten::embedding_bag to only have use for its first output.")
    else:
        cursor.place(quantized)
    result = quantized.output()
    if mode == EMBEDDING_BAG_MODES["mean"]:
        # The quantized kernels ignore their mode argument and always sum (so
        # do the reference and eager quantized EmbeddingBag): divide by the
        # bag sizes here.
        result = insert_scripted(graph, _bag_mean, [result, indices, offsets, include_last_offset], before=bag)[0]
    bag.outputsAt(0).replaceAllUsesWith(result)
    erase_nodes([bag])


def _embedding_bag_mode(mode: Value) -> int:
    """The mode of an embedding_bag as aten numbers it, from its constant (a number or F's name)."""
    if mode.node().kind() != "prim::Constant":
        raise ValueError(f"embedding_bag mode %{mode.debugName()} must be a constant to quantize the bag")
    value = ivalue(mode)
    if isinstance(value, str):
        if value not in EMBEDDING_BAG_MODES:
            raise ValueError(f"unknown embedding_bag mode {value!r}; expected one of {sorted(EMBEDDING_BAG_MODES)}")
        return EMBEDDING_BAG_MODES[value]
    return int(value)

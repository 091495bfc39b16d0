"""The op tables of graph-mode quantization, each written once.

Names are aten op names without the ``aten::`` prefix (``*_ATEN``) or the
short names of the Python functions scripted code calls through
``prim::CallFunction`` (``*_CALLS``: ``F.relu`` is ``relu``). The tables are
the reference's (torch 2.x graph mode), grouped the way its rules use them:

- quantizable ops: their Tensor inputs and outputs need an observer;
- weight / bias argument positions: weights take the qconfig's weight
  observer, biases are never observed;
- general ops (shape or value), which pass "already observed" from their
  input to their output and run on the quantized tensor, so a value is
  observed once however many flatten/pool/view ops it flows through;
- fixed-qparams ops (sigmoid, tanh), whose output range is known;
- propagating ops (cat, add, mul), whose output is observed only when their
  inputs are;
- ops that keep their input's quantization in a converted graph (the
  general ops and the slicing and copying ops that run on quantized tensors
  as they are).
"""

from __future__ import annotations

import torch

__all__ = [
    "STATIC_QUANTIZABLE_ATEN",
    "STATIC_QUANTIZABLE_CALLS",
    "DYNAMIC_QUANTIZABLE_ATEN",
    "DYNAMIC_QUANTIZABLE_CALLS",
    "WEIGHT_ONLY_ATEN",
    "WEIGHT_ONLY_CALLS",
    "GENERAL_SHAPE_ATEN",
    "GENERAL_SHAPE_CALLS",
    "GENERAL_VALUE_ATEN",
    "GENERAL_VALUE_CALLS",
    "FIXED_QPARAMS",
    "FIXED_QPARAMS_ATEN",
    "CLAMP_ATEN",
    "PROPAGATE_SINGLE_INPUT_ATEN",
    "PROPAGATE_BINARY_ATEN",
    "OBSERVED_INPUT_OF_CALL",
    "WEIGHT_ARGS_ATEN",
    "WEIGHT_ARGS_CALL",
    "BIAS_ARGS_ATEN",
    "BIAS_ARGS_CALL",
    "EMBEDDING_BAG_FLOAT_ARGS",
    "TENSOR_INFO_ATEN",
    "KEEPS_QUANTIZATION_ATEN",
    "PREPACK_OPS",
]


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


STATIC_QUANTIZABLE_CALLS = _names("conv2d linear batch_norm hardswish elu celu layer_norm group_norm instance_norm")
STATIC_QUANTIZABLE_CALLS |= _names("embedding_bag")
STATIC_QUANTIZABLE_ATEN = _names(
    "conv1d conv2d conv3d conv_transpose1d conv_transpose2d linear hardswish hardswish_ elu elu_ celu celu_ "
    "batch_norm layer_norm group_norm instance_norm embedding_bag"
)
DYNAMIC_QUANTIZABLE_CALLS = _names("linear")
DYNAMIC_QUANTIZABLE_ATEN = _names("linear")
# Only the weight of these is quantized; their output stays float.
WEIGHT_ONLY_CALLS = _names("embedding_bag")
WEIGHT_ONLY_ATEN = _names("embedding_bag")

# Ops that only move or reshape data: the output is observed iff the input is.
GENERAL_SHAPE_CALLS = _names("_max_pool1d _max_pool2d _max_pool3d dropout relu")
GENERAL_SHAPE_ATEN = _names(
    "max_pool1d max_pool2d max_pool3d flatten max min dropout reshape resize_ chunk view transpose contiguous "
    "permute repeat repeat_interleave relu relu_ squeeze squeeze_ unsqueeze unsqueeze_ detach detach_ stack "
    "__getitem__"
)
# Ops that compute on values but run on quantized tensors with the input's qparams.
GENERAL_VALUE_CALLS = _names(
    "avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d interpolate "
    "upsample upsample_bilinear upsample_nearest hardtanh leaky_relu"
)
GENERAL_VALUE_ATEN = _names(
    "avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d mean "
    "upsample_nearest1d upsample_nearest2d upsample_nearest3d upsample_linear1d upsample_bilinear2d "
    "upsample_trilinear3d upsample_bicubic2d clamp hardtanh hardtanh_ leaky_relu leaky_relu_"
)
# clamp-like general value ops whose scalar bounds (arguments 1 and 2) are quantized with the input.
CLAMP_ATEN = _names("hardtanh hardtanh_ clamp")

# Output ranges of these ops are fixed, so are their qparams: (scale, zero_point, dtype).
_ZERO_TO_ONE = (1.0 / 256.0, 0, torch.quint8)
_MINUS_ONE_TO_ONE = (2.0 / 256.0, 128, torch.quint8)
FIXED_QPARAMS = {
    "hardsigmoid": _ZERO_TO_ONE,
    "hardsigmoid_": _ZERO_TO_ONE,
    "sigmoid": _ZERO_TO_ONE,
    "sigmoid_": _ZERO_TO_ONE,
    "tanh": _MINUS_ONE_TO_ONE,
    "tanh_": _MINUS_ONE_TO_ONE,
}
# Fixed-qparams ops also pass observation through.
FIXED_QPARAMS_ATEN = frozenset(FIXED_QPARAMS)

PROPAGATE_SINGLE_INPUT_ATEN = _names("cat")
PROPAGATE_BINARY_ATEN = _names("add add_ mul mul_")

# F.batch_norm: only the input (argument 1 of the call) is observed.
OBSERVED_INPUT_OF_CALL = {"batch_norm": 1}

_CONVOLUTIONS = ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d")
WEIGHT_ARGS_ATEN = {**dict.fromkeys(_CONVOLUTIONS, 1), "linear": 1, "embedding_bag": 0}
WEIGHT_ARGS_CALL = {"linear": 2, "embedding_bag": 2}
BIAS_ARGS_ATEN = {**dict.fromkeys(_CONVOLUTIONS, 2), "linear": 2}
BIAS_ARGS_CALL = {"linear": 3}
# aten::embedding_bag(weight, indices, offsets, ..., per_sample_weights, ...): offsets
# and per-sample weights stay float.
EMBEDDING_BAG_FLOAT_ARGS = frozenset({2, 6})

# Ops that read a tensor's metadata only: the same from a quantized tensor.
TENSOR_INFO_ATEN = _names("size len dim numel")

# aten ops whose first output stays quantized when their first tensor input
# is: the general ops plus the slicing and copying ops that run on quantized
# tensors as they are (in-place forms and device moves too).
KEEPS_QUANTIZATION_ATEN = (
    GENERAL_SHAPE_ATEN
    | GENERAL_VALUE_ATEN
    | FIXED_QPARAMS_ATEN
    | _names(
        "cat view_as reshape_as expand expand_as clone select slice narrow split split_with_sizes unbind flip roll "
        "adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d _upsample_nearest_exact2d pixel_shuffle "
        "pixel_unshuffle channel_shuffle sort topk masked_fill index_select unflatten movedim t numpy_T "
        "hardswish relu6 elu threshold hardswish_ relu6_ elu_ clamp_ dropout_ to"
    )
)

# Weight prepacking ops, with no side effects: their result depends only on their inputs.
PREPACK_OPS = tuple(
    f"quantized::{name}"
    for name in (
        "linear_prepack linear_prepack_fp16 conv1d_prepack conv2d_prepack conv3d_prepack "
        "conv_transpose1d_prepack conv_transpose2d_prepack conv_transpose3d_prepack"
    ).split()
)

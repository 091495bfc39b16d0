"""qgraph: graph-mode quantization of TorchScript models.

A drop-in for ``torch.ao.quantization``'s JIT API whose passes are written in
Python and can be inspected after every stage (``qgraph.pipeline.inspect``).
"""

from qgraph.api import (
    convert_dynamic_jit,
    convert_jit,
    fuse_conv_bn_jit,
    prepare_dynamic_jit,
    prepare_jit,
    quantize_dynamic_jit,
    quantize_jit,
    script_qconfig,
    script_qconfig_dict,
)
from qgraph.capture import capture
from qgraph.compare import compare
from qgraph.draw import draw
from qgraph.sensitivity import sensitivity

__all__ = [
    "capture",
    "compare",
    "convert_dynamic_jit",
    "convert_jit",
    "draw",
    "fuse_conv_bn_jit",
    "prepare_dynamic_jit",
    "prepare_jit",
    "quantize_dynamic_jit",
    "quantize_jit",
    "script_qconfig",
    "script_qconfig_dict",
    "sensitivity",
]

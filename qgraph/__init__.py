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
from qgraph.quant.calibrators import EntropyObserver, MSEObserver, PercentileObserver
from qgraph.quant.merge import all_reduce_observers, merge_observers

__all__ = [
    "EntropyObserver",
    "MSEObserver",
    "PercentileObserver",
    "all_reduce_observers",
    "capture",
    "convert_dynamic_jit",
    "convert_jit",
    "fuse_conv_bn_jit",
    "merge_observers",
    "prepare_dynamic_jit",
    "prepare_jit",
    "quantize_dynamic_jit",
    "quantize_jit",
    "script_qconfig",
    "script_qconfig_dict",
]

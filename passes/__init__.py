"""qgraph's rewrites of TorchScript IR, one module per pass, each usable alone.

Each name here is the pass function (not its module): importing a pass
module that imports another would otherwise rebind the package attribute to
the module object.
"""

# qgraph's pipelines import these passes by name; loading qgraph first means
# no pass module is ever half-imported when a pipeline asks for it.
import qgraph  # noqa: F401  (isort: skip)
from passes.canonicalize_conv import canonicalize_conv
from passes.dedup_module_uses import dedup_module_uses
from passes.finalize import finalize
from passes.fold_conv_bn import fold_conv_bn
from passes.fuse_linear import fuse_linear
from passes.insert_observers import insert_observers
from passes.insert_quant_dequant import insert_quant_dequant
from passes.legalize_quantized import legalize_quantized
from passes.quantize_rnn import quantize_rnn
from passes.replicate_dequantize import replicate_dequantize
from passes.replicate_quantize import replicate_quantize
from passes.swap_functional_linear import swap_functional_linear

__all__ = [
    "canonicalize_conv",
    "dedup_module_uses",
    "finalize",
    "fold_conv_bn",
    "fuse_linear",
    "insert_observers",
    "insert_quant_dequant",
    "legalize_quantized",
    "quantize_rnn",
    "replicate_dequantize",
    "replicate_quantize",
    "swap_functional_linear",
]

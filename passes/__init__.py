"""qgraph's rewrites of TorchScript IR, each usable alone; one job per module or subpackage.

Each name here is the pass function. A pass imports ``qgraph.ir``,
``qgraph.pattern``, ``qgraph.pipeline`` and ``qgraph.quant``, never another
pass; ``passes.composite`` alone strings passes together, into the
sequences PyTorch's composite passes (``insert_observers``,
``insert_quant_dequant``, ``finalize``) run.
"""

from passes.canonicalize_conv import canonicalize_conv
from passes.composite import finalize, insert_observers, insert_quant_dequant
from passes.dedup_module_uses import dedup_module_uses
from passes.fold_conv_bn import fold_conv_bn
from passes.legalize import legalize_quantized
from passes.linear import fuse_linear, swap_functional_linear
from passes.lower import fold_prepacking, freeze, insert_prepack_unpack, keep_unsafe_convs_in_float, quant_fusion
from passes.lower_onednn import lower_onednn
from passes.qat import fold_trained_conv_bn, settle_weight_fake_quants, swap_conv_bn_for_qat
from passes.remove_list_mutation import remove_list_mutation
from passes.replicate_dequantize import replicate_dequantize
from passes.replicate_quantize import replicate_quantize
from passes.rnn import quantize_rnn
from passes.unshare_qconfig_types import unshare_qconfig_types

__all__ = [
    "canonicalize_conv",
    "dedup_module_uses",
    "finalize",
    "fold_conv_bn",
    "fold_prepacking",
    "fold_trained_conv_bn",
    "freeze",
    "fuse_linear",
    "insert_observers",
    "insert_prepack_unpack",
    "insert_quant_dequant",
    "keep_unsafe_convs_in_float",
    "legalize_quantized",
    "lower_onednn",
    "quant_fusion",
    "quantize_rnn",
    "remove_list_mutation",
    "replicate_dequantize",
    "replicate_quantize",
    "settle_weight_fake_quants",
    "swap_conv_bn_for_qat",
    "swap_functional_linear",
    "unshare_qconfig_types",
]

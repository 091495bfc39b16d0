"""Lowering to PyTorch's quantized kernels: the passes of PyTorch's finalize, in the order they run.

1. ``insert_prepack_unpack``: quantized conv/linear weights through a
   prepack / unpack pair;
2. ``keep_unsafe_convs_in_float``: convs on a kernel known to corrupt
   memory tagged to stay float;
3. ``quant_fusion``: ``dequantize -> op -> quantize`` islands into quantized ops;
4. ``freeze``: attributes into constants, weights prepacked from their
   attributes first;
5. ``fold_prepacking``: what prepacking is left runs once, into attributes.

The sequence itself is ``passes.composite.finalize_stages``.
"""

from passes.lower.fold_prepacking import fold_prepacking
from passes.lower.freeze import freeze
from passes.lower.insert_prepack_unpack import insert_prepack_unpack
from passes.lower.quant_fusion import keep_unsafe_convs_in_float, quant_fusion

__all__ = ["insert_prepack_unpack", "keep_unsafe_convs_in_float", "quant_fusion", "freeze", "fold_prepacking"]

"""quant_fusion: ``dequantize -> float op -> quantize`` islands into PyTorch's quantized ops.

``quant_fusion.py`` is the pass, ``tables.py`` its tables in order,
``builders.py`` the pattern of each family of entries, and
``unsafe_convs.py`` the step before it that keeps convs on a kernel known
to corrupt memory in float.
"""

from passes.lower.quant_fusion.quant_fusion import quant_fusion, quant_fusion_table
from passes.lower.quant_fusion.tables import DYNAMIC_QUANT_FUSION, STATIC_QUANT_FUSION
from passes.lower.quant_fusion.unsafe_convs import keep_unsafe_convs_in_float

__all__ = [
    "quant_fusion",
    "quant_fusion_table",
    "keep_unsafe_convs_in_float",
    "STATIC_QUANT_FUSION",
    "DYNAMIC_QUANT_FUSION",
]

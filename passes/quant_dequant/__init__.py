"""insert_quant_dequant: calibrated observers into quantize / dequantize pairs, then quantization carried through.

``insert_quant_dequant.py`` turns each observer into a quantize /
dequantize pair reading qparams attributes (``qparams.py``), after the
weight observers ran on the weights (``weights.py``) and what calibration
left was checked (``calibration.py``); embedding bags become their
quantized kernels (``embedding_bag.py``). ``propagate.py`` and ``loops.py``
are the steps that follow on the inlined graph.
"""

from passes.quant_dequant.calibration import (
    ObservedSite,
    check_calibration,
    first_non_finite_site,
    non_finite_calibration_message,
    observed_sites,
)
from passes.quant_dequant.insert_quant_dequant import insert_quant_dequant_in_place
from passes.quant_dequant.propagate import (
    propagate_quantization,
    remove_redundant_dequantize,
    remove_redundant_quantization,
    replicate_choose_qparams_quant_dequant,
    replicate_clamp_scalar_args,
)

__all__ = [
    "insert_quant_dequant_in_place",
    "replicate_choose_qparams_quant_dequant",
    "remove_redundant_quantization",
    "replicate_clamp_scalar_args",
    "propagate_quantization",
    "remove_redundant_dequantize",
    "ObservedSite",
    "observed_sites",
    "check_calibration",
    "first_non_finite_site",
    "non_finite_calibration_message",
]

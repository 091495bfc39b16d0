"""What a model is, as far as quantization goes, told from the ops it runs.

``quantization_state`` says whether a model is quantized, only prepared (it
holds observers) or not quantized at all; ``detected_quant_type`` tells a
dynamically quantized model from a statically quantized one by the ops only
dynamic quantization runs.
"""

from __future__ import annotations

import re
from typing import Any

from torch.ao.quantization.quant_type import QuantType

from qgraph.ir import CppModule, as_cpp, named_modules, walk
from qgraph.pipeline import method_graphs
from qgraph.quant.lowering import lowering_of
from qgraph.quant.observers import is_observer_path

__all__ = ["QUANTIZED", "PREPARED", "NOT_QUANTIZED", "QUANTIZE_KINDS", "quantization_state", "detected_quant_type"]

# What a model is, as far as quantization goes (``FloatOpReport.state``).
QUANTIZED = "quantized"
PREPARED = "prepared"  # observers inserted, not converted yet
NOT_QUANTIZED = "not quantized"

# Ops only a dynamically quantized model runs.
_DYNAMIC_MARKERS = frozenset(
    {
        "quantized::linear_dynamic",
        "quantized::linear_relu_dynamic",
        "quantized::linear_dynamic_fp16",
        "aten::quantized_lstm",
        "aten::quantized_gru",
        "quantized::quantized_lstm_cell_dynamic",
        "quantized::quantized_gru_cell_dynamic",
        "quantized::quantized_rnn_tanh_cell_dynamic",
        "quantized::quantized_rnn_relu_cell_dynamic",
        "aten::_choose_qparams_per_tensor",
        "aten::_saturate_weight_to_fp16",
    }
)
# quantized:: ops both kinds of model run (weight packing, weight-only embedding bags).
_SHARED_QUANTIZED = re.compile(r"quantized::(.*_prepack|.*_unpack|embedding_bag_.*)$")

# The ops that make a quantized tensor from a float one.
QUANTIZE_KINDS = {"aten::quantize_per_tensor", "aten::quantize_per_channel", "aten::quantize_per_tensor_dynamic"}


def _node_kinds(module_c: CppModule) -> set[str]:
    return {node.kind() for _, _, graph in method_graphs(module_c, distinct=True) for node in walk(graph)}


def quantization_state(model: Any) -> str:
    """``"quantized"``, ``"prepared"`` (observers, not converted) or ``"not quantized"``: what ``model`` is."""
    module_c = as_cpp(model)
    if any(is_observer_path(path) for path, _ in named_modules(module_c)):
        return PREPARED
    if lowering_of(module_c) != "reference":
        return QUANTIZED
    kinds = _node_kinds(module_c)
    quantized_kinds = QUANTIZE_KINDS | _DYNAMIC_MARKERS
    if any(kind.startswith(("quantized::", "aten::quantized_")) or kind in quantized_kinds for kind in kinds):
        return QUANTIZED
    return NOT_QUANTIZED


def detected_quant_type(model: Any) -> QuantType:
    """DYNAMIC when ``model`` runs dynamic quantization's ops and no static quantized op; else STATIC."""
    kinds = _node_kinds(as_cpp(model))
    static_ops = {
        k for k in kinds if k.startswith("quantized::") and k not in _DYNAMIC_MARKERS and not _SHARED_QUANTIZED.match(k)
    }
    return QuantType.DYNAMIC if kinds & _DYNAMIC_MARKERS and not static_ops else QuantType.STATIC

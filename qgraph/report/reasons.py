"""Why an op is left in float: the reason and detail the float-op report gives it.

``classify`` answers for an op found in float in the graph: no qconfig (by
the ``qconfig_dict`` or ``QConfigMapping``), an op with no quantized kernel
(``STATIC_QUANTIZABLE`` and ``DYNAMIC_QUANTIZABLE`` say which have one), or
a float input. ``reported_under_dynamic`` says which ops a dynamically
quantized model's report looks at at all.
"""

from __future__ import annotations

import re
from typing import Any

from passes.lower.quant_fusion import STATIC_QUANT_FUSION
from qgraph.ir import Node
from qgraph.pattern import compile_pattern
from qgraph.quant.float_ops import NO_QCONFIG, UNOBSERVED_INPUT, UNSUPPORTED_OP
from qgraph.quant.ops import KEEPS_QUANTIZATION_ATEN
from qgraph.quant.qconfig import qconfig_key_for_path
from qgraph.quant.qconfig_mapping import explain_op_qconfig, is_qconfig_mapping

__all__ = [
    "STATIC_QUANTIZABLE",
    "DYNAMIC_QUANTIZABLE",
    "classify",
    "classify_no_qconfig",
    "reported_under_dynamic",
]


def _fused_kinds() -> frozenset[str]:
    """aten ops the static fusion table turns into quantized ops (or runs on quantized tensors)."""
    plumbing = {
        "aten::dequantize",
        "aten::quantize_per_tensor",
        "aten::q_scale",
        "aten::q_zero_point",
        "aten::scalar_tensor",
        "aten::item",
    }
    kinds = set()
    for entry in STATIC_QUANT_FUSION:
        for node in compile_pattern(entry.pattern).nodes:
            if node.kind().startswith("aten::") and node.kind() not in plumbing:
                kinds.add(node.kind())
    return frozenset(kinds)


# What fusion turns into quantized ops, and the ops that run on a quantized tensor as they are.
STATIC_QUANTIZABLE = _fused_kinds() | frozenset(f"aten::{name}" for name in KEEPS_QUANTIZATION_ATEN)
DYNAMIC_QUANTIZABLE = frozenset(
    {
        "aten::linear",
        "aten::lstm",
        "aten::gru",
        "aten::lstm_cell",
        "aten::gru_cell",
        "aten::rnn_tanh_cell",
        "aten::rnn_relu_cell",
        "aten::embedding_bag",
    }
)

# Ops with weights that static quantization quantizes and dynamic quantization has no kernel for.
_STATIC_ONLY_WEIGHTED = frozenset(
    f"aten::{name}"
    for name in "conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d _convolution".split()
)

# RNN ops dynamic quantization has no kernel for (eager quantize_dynamic leaves nn.RNN float too).
_DYNAMIC_UNSUPPORTED = frozenset({"aten::rnn_tanh", "aten::rnn_relu"})


def reported_under_dynamic(kind: str) -> bool:
    """Whether the report of a dynamically quantized model looks at ``kind``.

    Dynamic quantization keeps activations in float by design: only the ops
    it handles, the RNN ops it has no kernel for and the weighted ops it
    leaves to static quantization are reported.
    """
    return kind in DYNAMIC_QUANTIZABLE or kind in _DYNAMIC_UNSUPPORTED or kind in _STATIC_ONLY_WEIGHTED


def classify(node: Node, path: str, qconfig_dict: Any, dynamic: bool) -> tuple[str, str]:
    """(reason, detail) for ``node``, found in float in the module at ``path``."""
    kind = node.kind()
    if is_qconfig_mapping(qconfig_dict):
        qconfig, entry = explain_op_qconfig(qconfig_dict, path, _module_class(node), kind)
        if qconfig is None:
            where = f"module {path!r}" if path else "the model"
            return NO_QCONFIG, f"the qconfig of {kind} in {where} is None (QConfigMapping {entry})"
    elif qconfig_dict is not None:
        key = qconfig_key_for_path(qconfig_dict, path)
        if key is None or qconfig_dict[key] is None:
            return classify_no_qconfig(path, qconfig_dict, key)
    if dynamic and kind in _DYNAMIC_UNSUPPORTED:
        return UNSUPPORTED_OP, f"no dynamic quantized kernel for {kind}"
    if dynamic and kind in _STATIC_ONLY_WEIGHTED:
        return UNSUPPORTED_OP, f"dynamic quantization has no kernel for {kind} (static quantization has: quantize_jit)"
    quantizable = DYNAMIC_QUANTIZABLE if dynamic else STATIC_QUANTIZABLE
    if kind not in quantizable:
        return UNSUPPORTED_OP, f"no quantized kernel for {kind}"
    return UNOBSERVED_INPUT, "its input is a float tensor (not observed, or produced by a float op)"


def _module_class(node: Node) -> str | None:
    """The class name (unqualified) of the module whose code made ``node``, when the graph kept it."""
    entries = [e for e in re.findall(r"([^.()]+)\(([^()]*)\)", node.getModuleHierarchy()) if e[0] != "SELF"]
    return entries[-1][1] or None if entries else None


def classify_no_qconfig(path: str, qconfig_dict: dict, key: str | None) -> tuple[str, str]:
    """(reason, detail) for an op of the module at ``path``, whose ``qconfig_dict`` entry ``key`` is None or missing."""
    where = f"module {path!r}" if path else "the model"
    if key is None:
        return NO_QCONFIG, f"no qconfig_dict entry covers {where}"
    inherited = f" (from the entry {key!r})" if key != path else ""
    return NO_QCONFIG, f"the qconfig of {where} is None{inherited}"

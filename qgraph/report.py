"""Which ops a quantized model still runs in float, and why.

``float_op_report(model)`` analyses a model after convert (finalized and
frozen, or the ``debug=True`` model) and lists every op that computes on
float tensors, with the module it came from, its source line and one of four
reasons:

- ``no qconfig``: the op belongs to a module whose effective qconfig is None
  (the ``qconfig_dict`` rule of ``qgraph.quant.qconfig.qconfig_for_path``: the
  longest matching prefix wins; known only when the ``qconfig_dict`` is
  passed in);
- ``unsupported op``: no quantized kernel or pattern exists for the op kind
  (``aten::exp``, ``aten::softmax``, ``aten::matmul``, ...), or for this use
  of it (an LSTM with ``proj_size > 0`` under dynamic quantization);
- ``unobserved input``: the op could run quantized, but its input is a float
  tensor (a model input nobody observed, the output of a float op, ...);
- ``kept in float by a safety rule``: a known PyTorch kernel bug makes the
  quantized op unsafe for this op's arguments, so convert's
  keep-unsafe-convs-in-float stage leaves it in float (a grouped conv on fbgemm's
  broken groupwise path: 2 or 4 channels per group, a channel count above 8
  that is not a multiple of 8, 3x3 kernel, padding 1, ...).

Convert records the ops it leaves in float on purpose (the safety rules, and
RNNs that dynamic quantization cannot handle) in the model, with their
reason and module (``qgraph.quant.float_ops``); those ops are reported from
their records, every other op from the graph. A model made with
``lowering="onednn"`` holds no quantized dtype to tell integer code from
float code by, so that lowering records every op it leaves in float, and the
report lists exactly those records (with ``no qconfig`` where the
``qconfig_dict`` switched the op's module off).

The report is computed on demand from the model, so convert keeps returning
just the model (as the reference does) and a model loaded back with
``torch.jit.load`` can be analysed as well (there the module of an op is
known only from its record: loading drops the graph's module call stacks)::

    report = float_op_report(quantized, qconfig_dict)
    print(report.format())

    4 ops left in float
    module   op              source           reason             detail
    ------   -------------   --------------   ----------------   -----------------------------
    head     aten::exp       model.py:31      unsupported op     no quantized kernel for aten::exp
    ...

Which values are quantized is ``qgraph.quant.quantized_values``:
quantize ops' results, quantized kernels' quantized results, and what shape
and value ops, lists, tuples, ``if`` and loops make of them. Dynamic
quantization keeps activations in float by design, so for
``QuantType.DYNAMIC`` only the ops dynamic quantization handles (linear,
LSTM/GRU and their cells, embedding_bag), the RNN ops it has no kernel
for (``nn.RNN``) and the convs it leaves in float are reported;
``detected_quant_type`` tells the two kinds of model apart by their ops.

A model that is not quantized (no quantize op, no quantized op) or only
prepared (it holds observers) gets no entries: ``FloatOpReport.state``
says which, and ``format`` says so in one line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from torch.ao.quantization.quant_type import QuantType

from passes.lower.quant_fusion import STATIC_QUANT_FUSION
from qgraph.ir import CppModule, Node, Value, as_cpp, method_graph, module_path_of, named_modules, source_location, walk
from qgraph.pattern import compile_pattern
from qgraph.pipeline import method_graphs
from qgraph.quant.float_ops import (
    NO_QCONFIG,
    SAFETY_RULE,
    UNOBSERVED_INPUT,
    UNSUPPORTED_OP,
    FloatOpRecord,
    float_op_record_nodes,
    float_op_records,
)
from qgraph.quant.lowering import lowering_of
from qgraph.quant.observers import is_observer_path
from qgraph.quant.ops import KEEPS_QUANTIZATION_ATEN
from qgraph.quant.qconfig import check_qconfig_dict, qconfig_key_for_path
from qgraph.quant.qconfig_mapping import explain_op_qconfig, is_qconfig_mapping
from qgraph.quant.quant_type import check_quant_type
from qgraph.quant.quantized_values import quantized_values

__all__ = [
    "FloatOp",
    "FloatOpReport",
    "float_op_report",
    "NO_QCONFIG",
    "UNSUPPORTED_OP",
    "UNOBSERVED_INPUT",
    "SAFETY_RULE",
    "QUANTIZED",
    "PREPARED",
    "NOT_QUANTIZED",
    "quantization_state",
    "detected_quant_type",
    "STATIC_QUANTIZABLE",
    "DYNAMIC_QUANTIZABLE",
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

# RNN ops dynamic quantization has no kernel for (eager quantize_dynamic leaves nn.RNN float too).
_DYNAMIC_UNSUPPORTED = frozenset({"aten::rnn_tanh", "aten::rnn_relu"})
_QUANTIZE_KINDS = {"aten::quantize_per_tensor", "aten::quantize_per_channel", "aten::quantize_per_tensor_dynamic"}
_FLOAT_KINDS = {"aten::dequantize"}


@dataclass(frozen=True)
class FloatOp:
    """One op left in float."""

    module_path: str  # dotted path of the module the op came from; "" is the model itself
    kind: str
    source: str | None  # "file:line" of the op, when the graph kept it
    reason: str
    detail: str
    method: str = "forward"


# What a model is, as far as quantization goes (``FloatOpReport.state``).
QUANTIZED = "quantized"
PREPARED = "prepared"  # observers inserted, not converted yet
NOT_QUANTIZED = "not quantized"


@dataclass
class FloatOpReport:
    """Every op a quantized model runs in float, in graph order.

    ``state`` says what the model is: ``"quantized"`` (the entries are the
    ops convert left in float), ``"prepared"`` (it holds observers: calibrate
    it and convert it) or ``"not quantized"`` (a float model: every op runs
    in float, and no entry is listed).
    """

    entries: list[FloatOp] = field(default_factory=list)
    state: str = QUANTIZED

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[FloatOp]:
        return iter(self.entries)

    def by_reason(self, reason: str) -> list[FloatOp]:
        return [entry for entry in self.entries if entry.reason == reason]

    def kinds(self) -> list[str]:
        return [entry.kind for entry in self.entries]

    def format(self) -> str:
        """A table, one row per op; a single line when nothing is left in float or nothing is quantized."""
        if self.state == NOT_QUANTIZED:
            return (
                "the model is not quantized: it holds no quantize op and no quantized op, so every op runs in float "
                "(prepare it with qgraph.prepare_jit, calibrate it and convert it with qgraph.convert_jit)"
            )
        if self.state == PREPARED:
            return (
                "the model is prepared, not quantized: it holds observers and every op still runs in float "
                "(run calibration data through it, then convert it with qgraph.convert_jit)"
            )
        if not self.entries:
            return "no ops left in float"
        header = ("module", "op", "source", "reason", "detail")
        rows = [header]
        for entry in self.entries:
            rows.append((entry.module_path or "<model>", entry.kind, entry.source or "-", entry.reason, entry.detail))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * width for width in widths))
        count = len(self.entries)
        return f"{count} op{'s' if count != 1 else ''} left in float\n" + "\n".join(lines)


# --- analysis ---------------------------------------------------------------------------------


def _carries_tensors(value: Value) -> bool:
    return "Tensor" in str(value.type())


def _float_inputs(node: Node, quantized: set[Value]) -> list[Value]:
    return [
        v for v in node.inputs() if _carries_tensors(v) and v.node().kind() != "prim::Constant" and v not in quantized
    ]


def float_op_report(model: Any, qconfig_dict: Any = None, quant_type: QuantType = QuantType.STATIC) -> FloatOpReport:
    """The ops ``model`` (a converted ScriptModule or its ``._c``) runs in float, with reasons.

    Every method of the model is analysed (nested blocks included); pass the
    ``qconfig_dict`` (or ``QConfigMapping``) used for prepare to tell ops
    switched off by a ``None`` qconfig (or covered by no entry) apart from
    the others.
    """
    check_quant_type(quant_type)
    if qconfig_dict is not None:
        check_qconfig_dict(qconfig_dict)
    module_c = as_cpp(model)
    dynamic = quant_type == QuantType.DYNAMIC
    state = quantization_state(module_c)
    if state != QUANTIZED:
        return FloatOpReport(state=state)
    if lowering_of(module_c) != "reference":
        return _recorded_report(module_c, qconfig_dict)
    report = FloatOpReport()
    for method in module_c._method_names():
        graph = method_graph(module_c, method)
        recorded = float_op_record_nodes(module_c, method)
        quantized = quantized_values(graph)
        for node in walk(graph):
            record = recorded.get(node)
            if record is not None:
                report.entries.append(_recorded(node, record, method))
                continue
            kind = node.kind()
            if not kind.startswith("aten::") or kind in _QUANTIZE_KINDS or kind in _FLOAT_KINDS:
                continue
            if (
                dynamic
                and kind not in DYNAMIC_QUANTIZABLE
                and kind not in _DYNAMIC_UNSUPPORTED
                and kind not in _STATIC_ONLY_WEIGHTED
            ):
                continue
            if not any(_carries_tensors(o) for o in node.outputs()):
                continue
            if any(v in quantized for v in node.inputs() if _carries_tensors(v)):
                continue
            if not _float_inputs(node, quantized):
                continue
            path = module_path_of(node)
            reason, detail = _classify(node, path, qconfig_dict, dynamic)
            report.entries.append(FloatOp(path, kind, source_location(node), reason, detail, method))
    return report


def _recorded_report(module_c: CppModule, qconfig_dict: dict | None) -> FloatOpReport:
    """The float ops a lowering recorded, as they are, but for ops whose qconfig is None."""
    report = FloatOpReport()
    for record in float_op_records(module_c):
        kind = record.float_op or record.op
        category, detail = record.category, record.reason
        if qconfig_dict is not None:
            key = qconfig_key_for_path(qconfig_dict, record.module)
            if key is None or qconfig_dict[key] is None:
                category, detail = _classify_no_qconfig(record.module, qconfig_dict, key)
        report.entries.append(FloatOp(record.module, kind, record.source or None, category, detail, record.method))
    return report


def _classify_no_qconfig(path: str, qconfig_dict: dict, key: str | None) -> tuple[str, str]:
    where = f"module {path!r}" if path else "the model"
    if key is None:
        return NO_QCONFIG, f"no qconfig_dict entry covers {where}"
    inherited = f" (from the entry {key!r})" if key != path else ""
    return NO_QCONFIG, f"the qconfig of {where} is None{inherited}"


def _recorded(node: Node, record: FloatOpRecord, method: str) -> FloatOp:
    # The record knows the module also where the graph forgot it (a loaded model).
    path = record.module or module_path_of(node)
    return FloatOp(path, node.kind(), source_location(node), record.category, record.reason, method)


def _classify(node: Node, path: str, qconfig_dict: Any, dynamic: bool) -> tuple[str, str]:
    kind = node.kind()
    if is_qconfig_mapping(qconfig_dict):
        qconfig, entry = explain_op_qconfig(qconfig_dict, path, _module_class(node), kind)
        if qconfig is None:
            where = f"module {path!r}" if path else "the model"
            return NO_QCONFIG, f"the qconfig of {kind} in {where} is None (QConfigMapping {entry})"
    elif qconfig_dict is not None:
        key = qconfig_key_for_path(qconfig_dict, path)
        if key is None or qconfig_dict[key] is None:
            return _classify_no_qconfig(path, qconfig_dict, key)
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
    quantized_kinds = _QUANTIZE_KINDS | _DYNAMIC_MARKERS
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

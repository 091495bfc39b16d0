"""The float-op report of a converted model: every op it runs in float, with its module, source and reason.

``float_op_report`` walks every method graph of the model (nested blocks
included) and lists the aten ops that compute on float tensors, or, for a
model whose lowering recorded its float ops, those records; ``FloatOpReport``
holds the entries and formats them as a table. The reasons come from
``qgraph.report.reasons``, the model's state from ``qgraph.report.state``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from torch.ao.quantization.quant_type import QuantType

from qgraph.ir import CppModule, Node, Value, as_cpp, method_graph, module_path_of, source_location, walk
from qgraph.quant.float_ops import FloatOpRecord, float_op_record_nodes, float_op_records
from qgraph.quant.lowering import lowering_of
from qgraph.quant.qconfig import check_qconfig_dict, qconfig_key_for_path
from qgraph.quant.quant_type import check_quant_type
from qgraph.quant.quantized_values import quantized_values
from qgraph.report.reasons import classify, classify_no_qconfig, reported_under_dynamic
from qgraph.report.state import NOT_QUANTIZED, PREPARED, QUANTIZE_KINDS, QUANTIZED, quantization_state

__all__ = ["FloatOp", "FloatOpReport", "float_op_report"]

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
            if not kind.startswith("aten::") or kind in QUANTIZE_KINDS or kind in _FLOAT_KINDS:
                continue
            if dynamic and not reported_under_dynamic(kind):
                continue
            if not any(_carries_tensors(o) for o in node.outputs()):
                continue
            if any(v in quantized for v in node.inputs() if _carries_tensors(v)):
                continue
            if not _float_inputs(node, quantized):
                continue
            path = module_path_of(node)
            reason, detail = classify(node, path, qconfig_dict, dynamic)
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
                category, detail = classify_no_qconfig(record.module, qconfig_dict, key)
        report.entries.append(FloatOp(record.module, kind, record.source or None, category, detail, record.method))
    return report


def _recorded(node: Node, record: FloatOpRecord, method: str) -> FloatOp:
    # The record knows the module also where the graph forgot it (a loaded model).
    path = record.module or module_path_of(node)
    return FloatOp(path, node.kind(), source_location(node), record.category, record.reason, method)

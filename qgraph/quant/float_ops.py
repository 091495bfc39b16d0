"""Records of the ops a converted model runs in float on purpose, and why.

A pass that leaves an op in float for a reason the graph cannot show (an
LSTM with a projection, a grouped conv on a kernel known to corrupt memory)
tags the node with ``tag_float_op``: node attributes survive inlining and
freezing, which drops module attributes. At the end of convert the tags
become records, in the module's string attribute ``_qgraph_float_ops``
(JSON, so it survives ``torch.jit.save``), one ``FloatOpRecord`` per float
op: the op it stands for, the model source line and module, the reason, and
where the float op is (its method, its kind, and its position among the
nodes of that kind in program order, checked against its source line).

``float_op_records(module)`` reads the records back;
``float_op_record_nodes(module, method)`` finds their nodes again, also in
a model loaded with ``torch.jit.load`` (which keeps no node attributes and
no module call stacks). ``rewrite_recording_float_ops`` runs a graph
rewrite over every method and keeps the records in step with it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from qgraph.ir import (
    CppModule,
    Graph,
    Node,
    as_cpp,
    is_alive,
    method_graph,
    module_path_of,
    set_attr,
    source_text,
    walk,
)

__all__ = [
    "FLOAT_OPS_ATTRIBUTE",
    "SAFETY_RULE",
    "NO_QCONFIG",
    "UNSUPPORTED_OP",
    "UNOBSERVED_INPUT",
    "FloatOpRecord",
    "tag_float_op",
    "is_tagged",
    "float_op_records",
    "float_op_record_nodes",
    "rewrite_recording_float_ops",
]

FLOAT_OPS_ATTRIBUTE = "_qgraph_float_ops"
# Node attributes of ``tag_float_op``.
_CATEGORY_TAG = "qgraph_float_category"
_REASON_TAG = "qgraph_float_reason"
_STANDS_FOR_TAG = "qgraph_float_stands_for"

# Why a recorded op is float, in the words of the float-op report.
SAFETY_RULE = "kept in float by a safety rule"
NO_QCONFIG = "no qconfig"
UNSUPPORTED_OP = "unsupported op"
# A float op whose input no observer saw (a model input, a float op's result).
UNOBSERVED_INPUT = "unobserved input"
_CATEGORIES = (SAFETY_RULE, NO_QCONFIG, UNSUPPORTED_OP, UNOBSERVED_INPUT)


class FloatOpRecord(NamedTuple):
    """One float op left in a converted graph on purpose, and why, for the float-op report."""

    op: str  # the op it stands for, e.g. "quantized::conv2d"
    source: str  # "file:line" of the model code, or "" when the graph has none
    scope: str  # the traced module scope ("__module.block.conv"), or ""
    reason: str  # the detail, in a sentence
    category: str = SAFETY_RULE  # SAFETY_RULE, UNSUPPORTED_OP, NO_QCONFIG or UNOBSERVED_INPUT
    float_op: str = ""  # the kind of the float node, e.g. "aten::conv2d"
    module: str = ""  # dotted path of the module the op came from ("" = the model)
    method: str = "forward"
    ordinal: int = -1  # position among the method's ``float_op`` nodes, in ``walk`` order


# A float op with its record, before the op's position is known.
_Placed = tuple[FloatOpRecord, Node]


def tag_float_op(node: Node, category: str, reason: str, stands_for: str | None = None) -> None:
    """Mark ``node`` as left in float on purpose; the end of convert turns the mark into a record.

    ``category`` is ``UNSUPPORTED_OP``, ``NO_QCONFIG``, ``SAFETY_RULE`` or
    ``UNOBSERVED_INPUT``;
    ``reason`` says why in a sentence; ``stands_for`` is the quantized op
    the node would have become (``"quantized::conv2d_relu"``), when it is
    not the node's own kind.
    """
    if category not in _CATEGORIES:
        raise ValueError(f"unknown float-op category {category!r}")
    node.s_(_CATEGORY_TAG, category)
    node.s_(_REASON_TAG, reason)
    if stands_for is not None:
        node.s_(_STANDS_FOR_TAG, stands_for)


def is_tagged(node: Node) -> bool:
    """Whether ``node`` carries a ``tag_float_op`` mark."""
    return node.hasAttribute(_REASON_TAG)


def _take_tags(graph: Graph) -> list[_Placed]:
    """The tagged nodes of ``graph`` with their records; the tags are removed."""
    placed = []
    for node in walk(graph):
        if node.kind() == "prim::Constant" or not node.hasAttribute(_REASON_TAG):
            continue
        record = FloatOpRecord(
            op=node.s(_STANDS_FOR_TAG) if node.hasAttribute(_STANDS_FOR_TAG) else node.kind(),
            source=_source_of(node),
            scope=node.scopeName(),
            reason=node.s(_REASON_TAG),
            category=node.s(_CATEGORY_TAG) if node.hasAttribute(_CATEGORY_TAG) else UNSUPPORTED_OP,
            float_op=node.kind(),
            module=module_path_of(node),
        )
        placed.append((record, node))
        for tag in (_REASON_TAG, _CATEGORY_TAG, _STANDS_FOR_TAG):
            if node.hasAttribute(tag):
                node.removeAttribute(tag)
    return placed


def _source_of(node: Node) -> str:
    text = source_text(node)
    first = text.strip().splitlines()[0] if text.strip() else ""
    # '  File "model.py", line 12' -> 'model.py:12'
    if first.startswith("File ") and ", line " in first:
        file_part, line_part = first[5:].rsplit(", line ", 1)
        return f"{file_part.strip().strip(chr(34))}:{line_part.strip()}"
    return first


def _nodes_by_kind(graph: Graph, kinds: set[str]) -> dict[str, list[Node]]:
    found: dict[str, list[Node]] = defaultdict(list)
    if kinds:
        for node in walk(graph):
            if node.kind() in kinds:
                found[node.kind()].append(node)
    return found


def _numbered(graph: Graph, method: str, placed: list[_Placed]) -> list[FloatOpRecord]:
    """The records of ``placed`` with their method and their node's position among its kind."""
    placed = [(record, node) for record, node in placed if is_alive(node)]
    by_kind = _nodes_by_kind(graph, {node.kind() for _, node in placed})
    positions = {node: i for nodes in by_kind.values() for i, node in enumerate(nodes)}
    ordered = sorted(placed, key=lambda item: (item[1].kind(), positions[item[1]]))
    return [record._replace(method=method, ordinal=positions[node]) for record, node in ordered]


def _located(graph: Graph, records: list[FloatOpRecord]) -> list[_Placed]:
    """The nodes ``records`` (of one method) name: the ordinal-th node of the kind, if its source agrees."""
    by_kind = _nodes_by_kind(graph, {record.float_op for record in records})
    found = []
    for record in records:
        nodes = by_kind.get(record.float_op, [])
        if 0 <= record.ordinal < len(nodes) and _source_of(nodes[record.ordinal]) == record.source:
            found.append((record, nodes[record.ordinal]))
    return found


def float_op_record_nodes(module: Any, method: str = "forward") -> dict[Node, FloatOpRecord]:
    """The nodes of ``module``'s ``method`` that its float-op records describe, with their records.

    A record of a fused op (``quantized::conv2d_relu``) names the float conv
    and the relu after it. A record whose node cannot be found (the graph
    was changed after convert, so the position or source line no longer
    agree) is left out.
    """
    module_c = as_cpp(module)
    records = [record for record in float_op_records(module_c) if record.method == method]
    if not records:
        return {}
    found = {}
    for record, node in _located(method_graph(module_c, method), records):
        found[node] = record
        if record.op.endswith("_relu"):
            # A fused conv + relu left in float is the float conv and the relu right after it.
            uses = node.output().uses()
            relu = uses[0].user if len(uses) == 1 else None
            if relu is not None and relu.kind() in ("aten::relu", "aten::relu_"):
                found[relu] = record
    return found


def float_op_records(module: Any) -> list[FloatOpRecord]:
    """The float ops recorded on ``module`` at the end of convert (empty if none)."""
    module_c = as_cpp(module)
    if not module_c.hasattr(FLOAT_OPS_ATTRIBUTE):
        return []
    entries = json.loads(module_c.getattr(FLOAT_OPS_ATTRIBUTE))
    # A model saved by an earlier release may carry fields records no longer have.
    return [FloatOpRecord(**{k: v for k, v in entry.items() if k in FloatOpRecord._fields}) for entry in entries]


def rewrite_recording_float_ops(module: Any, rewrite_graph: Callable[[Graph], int]) -> int:
    """``rewrite_graph`` on every method graph of ``module``, then the float-op tags turned into records.

    Records of an earlier run are kept and renumbered (found again before
    the rewrite shifts the positions of their nodes); the tags of every
    method become records. Returns the sum of what ``rewrite_graph``
    returned.
    """
    module_c: CppModule = as_cpp(module)
    earlier = float_op_records(module_c)
    records: list[FloatOpRecord] = []
    made = 0
    methods = module_c._method_names()
    for name in methods:
        graph = method_graph(module_c, name)
        placed = _located(graph, [record for record in earlier if record.method == name])
        kept = {id(record) for record, _ in placed}
        records += [record for record in earlier if record.method == name and id(record) not in kept]
        made += rewrite_graph(graph)
        placed += _take_tags(graph)
        records += _numbered(graph, name, placed)
    records += [record for record in earlier if record.method not in methods]
    if records or earlier:
        payload = json.dumps([record._asdict() for record in records])
        set_attr(module_c, FLOAT_OPS_ATTRIBUTE, payload, torch._C.StringType.get())
    return made

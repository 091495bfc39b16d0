"""Declarative graph rewrites: IR-text patterns, an anchored matcher, a rewriter.

A ``Rewrite`` is a pattern and a replacement, both TorchScript IR text
(``torch._C.parse_ir``), plus optional match filters. The replacement takes
the pattern's inputs, in order, and returns values for the pattern's outputs,
in order::

    Rewrite(
        name="addmm_to_linear",
        pattern='''graph(%input, %weight, %bias, %beta, %alpha):
            %weight_t = aten::t(%weight)
            %out = aten::addmm(%bias, %input, %weight_t, %beta, %alpha)
            return (%out)''',
        replacement='''graph(%input, %weight, %bias, %beta, %alpha):
            %out = aten::linear(%input, %weight, %bias)
            return (%out)''',
        filters=(value_is("alpha", 1), value_is("beta", 1)),
    )

The pattern is parsed and matched by ``qgraph.pattern_match``: matching
works on use-def structure, not names, from the pattern's last node (the
anchor) backwards; values produced inside a match must not be used outside
it, except the pattern's outputs.

``rewrite(graph, rewrites)`` applies a list of rewrites in order (order is
meaning: specific before general). Each rewrite visits the graph's nodes of
its anchor kind once, from an index built with one walk of the graph, so a
fixed table costs time linear in the graph. The replacement is inserted
before the anchor, takes the anchor's source range (or, with
``Rewrite(source="name")``, the range of the node that produced ``%name``),
its outputs keep the tensor types of the values they replace, and the matched
nodes are removed.

A replacement may also be a Python callable ``build(graph, match, before)``
that inserts nodes before ``before`` and returns the output values, for
rewrites whose result depends on the match (module attributes, folded
constants).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from qgraph.ir.edit import erase_nodes
from qgraph.ir.graph import Graph, Node, NodeIndex, Value, is_alive, nodes_before
from qgraph.pattern_match import Match, Pattern, compile_pattern, match_at

__all__ = [
    "Rewrite",
    "Pattern",
    "Match",
    "compile_pattern",
    "find_matches",
    "match_at",
    "rewrite",
    "rewrite_present",
    "value_is",
    "value_is_none",
]

Filter = Callable[["Match"], bool]
Builder = Callable[[Graph, "Match", Node], Sequence[Value]]


@dataclass(frozen=True)
class Rewrite:
    name: str
    pattern: str
    replacement: str | Builder
    filters: tuple[Filter, ...] = field(default=())
    # Pattern value whose producer lends its source range and scope to the
    # replacement; None means the anchor.
    source: str | None = None


@functools.cache
def _replacement_graph(text: str) -> Graph:
    return torch._C.parse_ir(text)


def find_matches(graph: Graph, pattern: str | Pattern, index: NodeIndex | None = None) -> list[Match]:
    """Every match of ``pattern`` in ``graph`` (nested blocks included), possibly overlapping."""
    compiled = compile_pattern(pattern) if isinstance(pattern, str) else pattern
    index = index if index is not None else NodeIndex(graph)
    found = []
    for node in index.of_kind(compiled.anchor.kind()):
        match = match_at(compiled, node)
        if match is not None:
            found.append(match)
    return found


def _apply(graph: Graph, rw: Rewrite, match: Match) -> list[Node]:
    anchor = match.anchor
    start = anchor.prev()
    if callable(rw.replacement):
        new_outputs = list(rw.replacement(graph, match, anchor))
    else:
        replacement = _replacement_graph(rw.replacement)
        saved = graph.insertPoint()
        graph.setInsertPoint(anchor)
        try:
            new_outputs = list(graph.insertGraph(replacement, match.inputs()))
        finally:
            graph.setInsertPoint(saved)
    old_outputs = match.outputs()
    if len(new_outputs) != len(old_outputs):
        raise ValueError(
            f"rewrite {rw.name!r}: replacement gives {len(new_outputs)} outputs, pattern has {len(old_outputs)}"
        )
    new_nodes = nodes_before(anchor, start)
    origin = match.node(rw.source) if rw.source is not None else anchor
    for node in new_nodes:
        node.copyMetadata(origin)
    created = set(new_nodes)
    names = [old.debugName() for old in old_outputs]
    for old, new in zip(old_outputs, new_outputs):
        # The replacement computes the same value, so what is known of the
        # old tensor (dtype, shape from tracing) stays true of the new one.
        if new.node() in created and _is_tensor(old) and _is_tensor(new):
            new.setType(old.type())
        old.replaceAllUsesWith(new)
    erase_nodes(match.matched_nodes())
    for name, new in zip(names, new_outputs):
        if not name.isdigit() and new.debugName().isdigit():
            new.setDebugName(name)
    return new_nodes


def _is_tensor(value: Value) -> bool:
    return value.type().kind() == "TensorType"


def rewrite(graph: Graph, rewrites: Sequence[Rewrite], index: NodeIndex | None = None) -> int:
    """Apply ``rewrites`` in order to every match in ``graph``; the number of rewrites made.

    ``index`` may be shared by several calls on the same graph; nodes the
    replacements create are added to it.
    """
    index = index if index is not None else NodeIndex(graph)
    made = 0
    for rw in rewrites:
        pattern = compile_pattern(rw.pattern)
        for anchor in index.of_kind(pattern.anchor.kind()):
            if not is_alive(anchor):
                continue
            match = match_at(pattern, anchor)
            if match is None or not all(f(match) for f in rw.filters):
                continue
            for node in _apply(graph, rw, match):
                index.add(node)
            made += 1
    return made


def rewrite_present(graph: Graph, rewrites: Sequence[Rewrite]) -> int:
    """``rewrite`` in table order, skipping rewrites whose op kinds are absent from ``graph``.

    A pattern can only match where every op kind it contains occurs, so a
    model without convolutions never tries the conv patterns of a large
    table. Kinds are looked up when each rewrite's turn comes, since earlier
    rewrites create the ops later ones match (``quantized::add_scalar``
    before ``add_scalar -> relu``).
    """
    index = NodeIndex(graph)
    made = 0
    for entry in rewrites:
        if all(index.of_kind(kind) for kind in _op_kinds(entry.pattern)):
            made += rewrite(graph, [entry], index)
    return made


@functools.cache
def _op_kinds(pattern: str) -> tuple[str, ...]:
    return tuple({node.kind() for node in compile_pattern(pattern).nodes if node.kind() != "prim::Constant"})


def value_is(name: str, expected: Any) -> Filter:
    """Filter: ``%name`` is a constant equal to ``expected`` (``1`` does not match ``True``)."""

    def check(match: Match) -> bool:
        actual = match.constant(name, default=_MISSING)
        if actual is _MISSING:
            return False
        if isinstance(expected, bool) or isinstance(actual, bool):
            return type(actual) is type(expected) and actual == expected
        return actual == expected

    check.__name__ = f"value_is({name}={expected!r})"
    return check


def value_is_none(name: str) -> Filter:
    """Filter: ``%name`` is the constant None."""

    def check(match: Match) -> bool:
        return match[name].type().kind() == "NoneType"

    check.__name__ = f"value_is_none({name})"
    return check


_MISSING = object()

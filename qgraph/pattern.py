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

Matching works on use-def structure, not names: the pattern's last node is
the anchor; a candidate graph node of the anchor's kind matches when, walking
inputs backwards, every pattern node finds a graph node of the same kind,
input/output count and attributes, in the same block as the anchor.
``prim::Constant`` nodes in a pattern match graph constants of equal value
(anywhere). Pattern inputs bind to any graph value, the same value wherever
the pattern repeats an input. Values produced inside the match must not be
used outside it, except the pattern's outputs.

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
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from qgraph.ir.edit import erase_nodes
from qgraph.ir.graph import Graph, Node, NodeIndex, Value, inputs_of, is_alive, nodes_before, outputs_of

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


class Pattern:
    """A parsed pattern graph, ready to be matched."""

    def __init__(self, text: str):
        self.text = text
        self.graph = torch._C.parse_ir(text)
        self.inputs: list[Value] = list(self.graph.inputs())
        self.outputs: list[Value] = list(self.graph.return_node().inputs())
        self.nodes: list[Node] = list(self.graph.nodes())
        if not self.nodes:
            raise ValueError("a pattern needs at least one node")
        self.anchor: Node = self.nodes[-1]
        if self.anchor.kind() == "prim::Constant":
            raise ValueError("a pattern cannot end in a constant")
        self.input_set = set(self.inputs)
        if any(len(list(n.blocks())) for n in self.nodes):
            raise ValueError("patterns with nested blocks are not supported")
        self.names: dict[str, Value] = {v.debugName(): v for v in self.inputs}
        # parse_ir keeps input names but renumbers node outputs, so the names
        # are read back from the text, whose node lines are in graph order.
        lines = _node_output_names(text)
        if len(lines) != len(self.nodes):
            raise ValueError("could not read the pattern's value names")
        for node, names in zip(self.nodes, lines):
            for name, value in zip(names, node.outputs()):
                self.names[name] = value
        reachable = self._reachable_from_anchor()
        stray = [n.kind() for n in self.nodes if n not in reachable and n.kind() != "prim::Constant"]
        if stray:
            raise ValueError(f"pattern nodes not connected to the anchor {self.anchor.kind()}: {stray}")
        for value in self.outputs:
            if value in self.input_set:
                raise ValueError("a pattern output must be produced by a pattern node")
        self.output_set = set(self.outputs)
        # What the matcher asks of each pattern node, read once here: pybind
        # accessors cost more than the comparisons they feed.
        self.node_info: dict[Node, _PatternNode] = {node: _PatternNode(node) for node in self.nodes}

    def _reachable_from_anchor(self) -> set[Node]:
        seen: set[Node] = set()
        stack = [self.anchor]
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            for value in node.inputs():
                if value not in self.input_set:
                    stack.append(value.node())
        return seen


class _PatternNode:
    """A pattern node's kind, values and comparable attributes, read once."""

    __slots__ = ("kind", "inputs", "outputs", "attributes", "is_constant")

    def __init__(self, node: Node):
        self.kind = node.kind()
        self.inputs = inputs_of(node)
        self.outputs = outputs_of(node)
        self.is_constant = self.kind == "prim::Constant"
        self.attributes = []
        for name in node.attributeNames():
            kind = node.kindOf(name)
            if kind in ("t", "ts", "g", "gs", "c", "ty", "tys", "ival"):
                continue  # tensors, graphs and types are not compared structurally
            self.attributes.append((name, kind, getattr(node, kind)(name)))


_ASSIGNMENT = re.compile(r"^\s*(%[^=]*?)\s*=\s*[\w:]+")


def _node_output_names(text: str) -> list[list[str]]:
    names = []
    for line in text.splitlines()[1:]:
        found = _ASSIGNMENT.match(line)
        if found and not line.strip().startswith("return"):
            lhs = found.group(1)
            names.append([part.split(":")[0].strip().lstrip("%") for part in lhs.split(",")])
    return names


@functools.cache
def compile_pattern(text: str) -> Pattern:
    return Pattern(text)


@functools.cache
def _replacement_graph(text: str) -> Graph:
    return torch._C.parse_ir(text)


class Match:
    """Bindings of one match: pattern value names to graph values, pattern nodes to graph nodes."""

    def __init__(self, pattern: Pattern, anchor: Node):
        self.pattern = pattern
        self.anchor = anchor
        self.value_map: dict[Value, Value] = {}
        self.node_map: dict[Node, Node] = {}

    def __getitem__(self, name: str) -> Value:
        """The graph value bound to pattern value ``%name``."""
        try:
            return self.value_map[self.pattern.names[name]]
        except KeyError:
            raise KeyError(f"pattern has no value %{name}") from None

    def node(self, name: str) -> Node:
        """The graph node that produced the value bound to ``%name``."""
        return self[name].node()

    def constant(self, name: str, default: Any = ...) -> Any:
        """The constant value bound to ``%name``; ``default`` if it is not a constant."""
        value = self[name]
        if value.node().kind() != "prim::Constant":
            if default is ...:
                raise ValueError(f"%{name} is not a constant")
            return default
        return value.toIValue()

    def inputs(self) -> list[Value]:
        return [self.value_map[v] for v in self.pattern.inputs]

    def outputs(self) -> list[Value]:
        return [self.value_map[v] for v in self.pattern.outputs]

    def matched_nodes(self) -> list[Node]:
        """Graph nodes of the match in pattern order, constants left out."""
        return [
            self.node_map[n]
            for n in self.pattern.nodes
            if not self.pattern.node_info[n].is_constant and n in self.node_map
        ]


def _attributes_equal(p: _PatternNode, g: Node) -> bool:
    for name, kind, expected in p.attributes:
        if not g.hasAttribute(name):
            return False
        if getattr(g, kind)(name) != expected:
            return False
    return True


def _constants_equal(p: Node, g: Node) -> bool:
    if g.kind() != "prim::Constant":
        return False
    gv = g.output()
    p_has, g_has = p.hasAttribute("value"), g.hasAttribute("value")
    if not p_has:
        return not g_has  # None matches None
    if not g_has:
        return False
    a, b = _pattern_constant(p), gv.toIValue()
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return False
    return a == b


def _pattern_constant(node: Node) -> Any:
    # parse_ir types an unannotated value as Tensor, so for
    # ``%one = prim::Constant[value=1]()`` toIValue looks for a tensor; the
    # attribute itself says what was written.
    kind = node.kindOf("value")
    if node.output().type().kind() == "TensorType" and kind != "t":
        return getattr(node, kind)("value")
    return node.output().toIValue()


def match_at(pattern: Pattern, anchor: Node) -> Match | None:
    """The match of ``pattern`` anchored at ``anchor``, or None."""
    info = pattern.node_info
    if anchor.kind() != info[pattern.anchor].kind:
        return None
    match = Match(pattern, anchor)
    block = anchor.owningBlock()
    value_map, node_map = match.value_map, match.node_map
    matched: set[Node] = set()

    def bind(p_value: Value, g_value: Value) -> bool:
        bound = value_map.get(p_value)
        if bound is None:
            value_map[p_value] = g_value
            return True
        return bound == g_value

    stack: list[tuple[Node, Node]] = [(pattern.anchor, anchor)]
    while stack:
        p_node, g_node = stack.pop()
        seen = node_map.get(p_node)
        if seen is not None:
            if seen != g_node:
                return None
            continue
        p = info[p_node]
        if p.is_constant:
            if not _constants_equal(p_node, g_node):
                return None
            node_map[p_node] = g_node
            if not bind(p.outputs[0], g_node.output()):
                return None
            continue
        if (
            g_node.kind() != p.kind
            or g_node.inputsSize() != len(p.inputs)
            or g_node.outputsSize() != len(p.outputs)
            or g_node in matched
            or g_node.owningBlock() != block
            or not _attributes_equal(p, g_node)
        ):
            return None
        node_map[p_node] = g_node
        matched.add(g_node)
        for i, p_out in enumerate(p.outputs):
            if not bind(p_out, g_node.outputsAt(i)):
                return None
        for i, p_in in enumerate(p.inputs):
            g_in = g_node.inputsAt(i)
            if not bind(p_in, g_in):
                return None
            if p_in not in pattern.input_set:
                if p_in.offset() != g_in.offset():
                    return None
                stack.append((p_in.node(), g_in.node()))

    matched = set(node_map.values())
    for p_node, g_node in node_map.items():
        p = info[p_node]
        if p.is_constant:
            continue
        for i, p_out in enumerate(p.outputs):
            if p_out in pattern.output_set:
                continue
            if any(use.user not in matched for use in g_node.outputsAt(i).uses()):
                return None  # an inner value escapes the match
    return match


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

"""The pattern side of ``qgraph.pattern``: IR text parsed into a ``Pattern``, matched at an anchor node.

``compile_pattern(text)`` parses a pattern once (cached by its text) and
checks it: at least one node, the last one (the anchor) not a constant,
every node connected to the anchor, no nested blocks, outputs produced by
pattern nodes. Value names are read back from the text, so a ``Match`` binds
``%name`` of the pattern to a graph value.

Matching works on use-def structure, not names: the pattern's last node is
the anchor; a candidate graph node of the anchor's kind matches when, walking
inputs backwards, every pattern node finds a graph node of the same kind,
input/output count and attributes, in the same block as the anchor.
``prim::Constant`` nodes in a pattern match graph constants of equal value
(anywhere). Pattern inputs bind to any graph value, the same value wherever
the pattern repeats an input. Values produced inside the match must not be
used outside it, except the pattern's outputs.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import torch

from qgraph.ir.graph import Node, Value, inputs_of, outputs_of

__all__ = ["Pattern", "Match", "compile_pattern", "match_at"]


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

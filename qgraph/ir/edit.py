"""Editing TorchScript graphs: inserting ops, constants and attribute reads, moving and erasing nodes.

Nothing here knows about quantization. ``insert_op`` and ``insert_getattr``
place one node; ``NodeBuilder`` places a sequence of them, each after the
last one (or all before a fixed node).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import torch

from qgraph.ir.graph import TENSOR, Graph, Node, Value, inputs_of, is_alive, nested_blocks, outputs_of

__all__ = [
    "insert_op",
    "insert_constant",
    "insert_getattr",
    "insert_scripted",
    "clone_node",
    "set_inputs",
    "NodeBuilder",
    "replace_uses",
    "hoist_before",
    "erase_nodes",
    "erase_dead",
]


def insert_op(
    graph: Graph,
    kind: str,
    inputs: Sequence[Value | Any],
    *,
    before: Node | None = None,
    after: Node | None = None,
    n_outputs: int = 1,
    output_types: Sequence[Any] | None = None,
    source: Node | None = None,
) -> Node:
    """Create a node ``kind(*inputs)`` and place it before ``before`` or after ``after``.

    Non-``Value`` inputs become constants. The interpreter binds the operator
    overload from the input types when the graph runs, so no overload is
    chosen here. Outputs are ``Tensor`` unless ``output_types`` says otherwise.
    ``source`` copies source range and scope from another node. Without
    ``before``/``after`` the node goes at the graph's insert point.
    """
    if before is not None and after is not None:
        raise ValueError("give one of before= and after=")
    # Constants go before ``after`` itself: they have no inputs, so any
    # position before the new node is valid.
    position = before if before is not None else after
    with _InsertBefore(graph, position):
        resolved = [v if isinstance(v, Value) else _insert_constant_here(graph, v) for v in inputs]
        node = graph.create(kind, resolved, n_outputs)
        graph.insertNode(node)
    if after is not None:
        node.moveAfter(after)
    types = output_types if output_types is not None else [TENSOR] * n_outputs
    for out, ty in zip(outputs_of(node), types):
        out.setType(ty)
    if source is not None:
        node.copyMetadata(source)
    return node


class _InsertBefore:
    def __init__(self, graph: Graph, node: Node | None):
        self.graph, self.node = graph, node

    def __enter__(self):
        self.saved = self.graph.insertPoint()
        if self.node is not None:
            self.graph.setInsertPoint(self.node)
        return self

    def __exit__(self, *exc):
        self.graph.setInsertPoint(self.saved)
        return False


def insert_constant(graph: Graph, value: Any, *, before: Node | None = None) -> Value:
    """A ``prim::Constant`` for ``value`` placed before ``before`` (or at the insert point)."""
    with _InsertBefore(graph, before):
        return _insert_constant_here(graph, value)


def _insert_constant_here(graph: Graph, value: Any) -> Value:
    # The stubs of torch._C.Graph leave insertConstant out.
    return cast(Any, graph).insertConstant(value)


def clone_node(graph: Graph, node: Node, value_map: Callable[[Value], Value]) -> Node:
    """A copy of ``node`` (blocks included) reading ``value_map(v)`` for each input ``v``; not inserted."""
    return cast(Any, graph).createClone(node, value_map)


def set_inputs(node: Node, values: Iterable[Value]) -> None:
    """Make ``values`` the inputs of ``node`` (a block's return node, say), replacing the ones it had."""
    bound = cast(Any, node)
    bound.removeAllInputs()
    for value in values:
        bound.addInput(value)


def insert_getattr(
    graph: Graph,
    obj: Value,
    name: str,
    type_: Any,
    *,
    before: Node | None = None,
    after: Node | None = None,
    source: Node | None = None,
    debug_name: str | None = None,
) -> Node:
    """A ``prim::GetAttr[name=...](obj)`` typed ``type_``, before ``before`` or after ``after``.

    ``after`` may be a block's parameter node (the read then opens the
    block). ``source`` lends its source range and scope; ``debug_name``
    names the output (TorchScript numbers it, ``bias.1``, when the name is
    taken).
    """
    if (before is None) == (after is None):
        raise ValueError("give exactly one of before= and after=")
    node = graph.create("prim::GetAttr", [obj], 1)
    node.s_("name", name)
    node.output().setType(type_)
    if before is not None:
        node.insertBefore(before)
    elif after is not None:
        node.insertAfter(after)
    if source is not None:
        node.copyMetadata(source)
    if debug_name is not None:
        node.output().setDebugName(debug_name)
    return node


@functools.cache
def _scripted_graph(function: Callable[..., Any]) -> Graph:
    graph = torch.jit.script(function).graph
    torch._C._jit_pass_inline(graph)
    return graph


def insert_scripted(
    graph: Graph, function: Callable[..., Any], inputs: Sequence[Value], *, before: Node
) -> list[Value]:
    """The body of a TorchScript-compatible Python ``function``, inlined before ``before``; its outputs.

    For rewrites whose replacement is easier to write as Python than as IR
    text (a run-time guard, a division by bag sizes). The function is
    scripted once.
    """
    with graph.insert_point_guard(before):
        return list(graph.insertGraph(_scripted_graph(function), list(inputs)))


class NodeBuilder:
    """Places nodes in sequence, each right after the previous one (``after=``) or all before ``before``."""

    def __init__(self, graph: Graph, *, after: Node | None = None, before: Node | None = None):
        if (after is None) == (before is None):
            raise ValueError("give exactly one of after= and before=")
        self.graph, self.last, self.before = graph, after, before

    def place(self, node: Node) -> Node:
        """Insert an already created node at the builder's position."""
        if self.before is not None:
            node.insertBefore(self.before)
        elif self.last is not None:
            node.insertAfter(self.last)
            self.last = node
        return node

    def op(
        self, kind: str, inputs: Sequence[Value], *, n_outputs: int = 1, name: str | None = None, type_: Any = None
    ) -> Node:
        """``kind(*inputs)``; with one output, typed ``type_`` and named ``name`` when given."""
        node = self.place(self.graph.create(kind, list(inputs), n_outputs))
        if n_outputs == 1:
            if type_ is not None:
                node.output().setType(type_)
            if name is not None:
                node.output().setDebugName(name)
        return node

    def constant(self, value: Any) -> Value:
        constant = _insert_constant_here(self.graph, value)
        if self.before is not None:
            constant.node().moveBefore(self.before)
        elif self.last is not None:
            constant.node().moveAfter(self.last)
            self.last = constant.node()
        return constant

    def get_attr(self, obj: Value, name: str, type_: Any) -> Value:
        """``obj.<name>`` read as ``type_``."""
        if self.before is not None:
            return insert_getattr(self.graph, obj, name, type_, before=self.before, debug_name=name).output()
        read = insert_getattr(self.graph, obj, name, type_, after=self.last, debug_name=name)
        self.last = read
        return read.output()


def replace_uses(old: Value, new: Value, *, after: Node | None = None) -> None:
    """Point the uses of ``old`` at ``new`` (only uses after ``after`` if given)."""
    if after is None:
        old.replaceAllUsesWith(new)
    else:
        old.replaceAllUsesAfterNodeWith(after, new)


def hoist_before(values: Iterable[Value], before: Node) -> bool:
    """Move what computes ``values`` up to just before ``before``, so they are defined there.

    ``values`` must be visible to some node after ``before`` in its block.
    Producers already before ``before`` (or in enclosing blocks) stay; the
    others, with their own inputs, move there dependencies first. Returns False, and
    moves nothing, when a value depends on ``before`` itself or on a node
    with nested blocks. Moved nodes are not checked for side effects against
    the nodes they move past.
    """
    block = before.owningBlock()
    to_move: list[Node] = []
    placed: set[Node] = set()

    def collect(value: Value) -> bool:
        node = value.node()
        if node in placed or node.owningBlock() != block or node == block.paramNode():
            return True
        if node == before:
            return False
        if node.isBefore(before):
            return True
        if nested_blocks(node):
            return False
        if not all(collect(v) for v in inputs_of(node)):
            return False
        placed.add(node)
        to_move.append(node)
        return True

    if not all(collect(v) for v in values):
        return False
    for node in to_move:
        node.moveBefore(before)
    return True


def erase_nodes(nodes: Iterable[Node]) -> None:
    """Destroy nodes, users before producers; every output must be unused."""
    pending = [n for n in nodes if is_alive(n)]
    # Reverse program order destroys users first for nodes in one block; nodes
    # from several blocks are retried until their outputs have no uses.
    for _ in range(len(pending) + 1):
        remaining = []
        for node in reversed(pending):
            if any(o.uses() for o in outputs_of(node)):
                remaining.append(node)
            else:
                node.destroy()
        if not remaining:
            return
        if len(remaining) == len(pending):
            names = ", ".join(n.kind() for n in remaining)
            raise RuntimeError(f"cannot erase nodes whose outputs are still used: {names}")
        pending = list(reversed(remaining))


def erase_dead(graph: Graph) -> None:
    """Remove nodes whose results are unused and that have no side effects."""
    torch._C._jit_pass_dce(graph)

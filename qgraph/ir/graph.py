"""Walking and editing TorchScript graphs (``torch._C.Graph`` / ``Block``).

Everything here is about IR structure only; nothing knows about quantization.
Node wrappers handed out by ``torch._C`` are stable for the life of the node
(the same Python object comes back for the same node, and a destroyed node
raises "has been invalidated" when touched), so nodes can be kept in sets and
dicts while a pass runs.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

Graph = torch._C.Graph
Block = torch._C.Block
Node = torch._C.Node
Value = torch._C.Value
TENSOR = torch._C.TensorType.get()

__all__ = [
    "walk",
    "blocks_of",
    "nested_blocks",
    "inputs_of",
    "outputs_of",
    "NodeIndex",
    "uses_of",
    "users_of",
    "producer",
    "is_alive",
    "is_constant",
    "constant_value",
    "insert_op",
    "insert_constant",
    "replace_uses",
    "hoist_before",
    "erase_nodes",
    "erase_dead",
    "nodes_before",
    "module_path_of",
    "source_location",
    "strip_serialized",
]


# Kinds known to carry no blocks. ``Node.blocks()`` and ``Node.inputs()`` /
# ``outputs()`` return pybind iterators that end by throwing a C++ exception,
# which costs tens of microseconds; over a large graph that dominates every
# walk, so nodes that cannot have blocks are not asked for them.
_BLOCKLESS_PRIM_KINDS = frozenset(
    {
        "prim::Constant", "prim::GetAttr", "prim::SetAttr", "prim::CallMethod", "prim::CallFunction",
        "prim::ListConstruct", "prim::ListUnpack", "prim::TupleConstruct", "prim::TupleUnpack",
        "prim::TupleIndex", "prim::TupleSlice", "prim::DictConstruct", "prim::dtype", "prim::device",
        "prim::layout", "prim::NumToTensor", "prim::RaiseException", "prim::unchecked_cast",
        "prim::Uninitialized", "prim::isinstance", "prim::Print", "prim::max", "prim::min",
        "prim::data", "prim::is_cuda", "prim::fork", "prim::Enter", "prim::Exit",
        "prim::CreateObject", "prim::ListIndex", "prim::requires_grad", "prim::shape",
    }
)
_MAY_HAVE_BLOCKS: dict[str, bool] = {}


def _may_have_blocks(kind: str) -> bool:
    known = _MAY_HAVE_BLOCKS.get(kind)
    if known is None:
        namespace = kind.split("::", 1)[0]
        # Operator kinds (aten::, quantized::, ...) come from schemas and never
        # own blocks; control flow lives in prim:: and onnx:: kinds.
        known = namespace in ("prim", "onnx") and kind not in _BLOCKLESS_PRIM_KINDS
        _MAY_HAVE_BLOCKS[kind] = known
    return known


def nested_blocks(node: Node) -> list[Block]:
    """The blocks a node owns (``prim::If`` branches, a ``prim::Loop`` body), as a list."""
    if not _may_have_blocks(node.kind()):
        return []
    return list(node.blocks())


def inputs_of(item: Node | Graph | Block) -> list[Value]:
    """The inputs of a node, graph or block, as a list.

    Same as ``list(item.inputs())`` without exhausting a pybind iterator,
    which costs more than reading the values one by one.
    """
    if isinstance(item, Node):
        return [item.inputsAt(i) for i in range(item.inputsSize())]
    param = item.param_node() if isinstance(item, Graph) else item.paramNode()
    return [param.outputsAt(i) for i in range(param.outputsSize())]


def outputs_of(item: Node | Graph | Block) -> list[Value]:
    """The outputs of a node, graph or block (the values it returns), as a list; see ``inputs_of``."""
    if isinstance(item, Node):
        return [item.outputsAt(i) for i in range(item.outputsSize())]
    ret = item.return_node() if isinstance(item, Graph) else item.returnNode()
    return [ret.inputsAt(i) for i in range(ret.inputsSize())]


def walk(graph_or_block: Graph | Block, *, into_blocks: bool = True) -> Iterator[Node]:
    """Every node in program order; a node with blocks comes before their nodes.

    A block's node list is read when the walk enters the block, so nodes
    inserted later in a block already entered are not visited.
    """
    nodes = list(graph_or_block.nodes())
    if not into_blocks:
        yield from nodes
        return
    may_have_blocks = _may_have_blocks
    for node in nodes:
        has_blocks = may_have_blocks(node.kind())
        yield node
        if has_blocks:
            for block in list(node.blocks()):
                yield from walk(block)


def blocks_of(graph_or_block: Graph | Block) -> Iterator[Block]:
    """The graph's top block (or the block itself), then every nested block."""
    top = graph_or_block.block() if isinstance(graph_or_block, Graph) else graph_or_block
    yield top
    for node in walk(top):
        yield from nested_blocks(node)


class NodeIndex:
    """Nodes of a graph grouped by kind, built with one walk.

    Passes ask the index for the nodes of the kinds they rewrite instead of
    rescanning the graph per match. Nodes added later can be registered with
    ``add``; destroyed nodes are skipped when read.
    """

    def __init__(self, graph_or_block: Graph | Block):
        self._by_kind: dict[str, list[Node]] = defaultdict(list)
        for node in walk(graph_or_block):
            self._by_kind[node.kind()].append(node)

    def add(self, node: Node) -> None:
        self._by_kind[node.kind()].append(node)

    def of_kind(self, *kinds: str) -> list[Node]:
        """Live nodes of the given kinds, each kind's nodes in the order seen."""
        found: list[Node] = []
        for kind in kinds:
            live = [n for n in self._by_kind.get(kind, ()) if is_alive(n)]
            self._by_kind[kind] = live
            found.extend(live)
        return found

    def kinds(self) -> list[str]:
        return [k for k, nodes in self._by_kind.items() if any(is_alive(n) for n in nodes)]

    def counts(self) -> dict[str, int]:
        return {k: len(self.of_kind(k)) for k in list(self._by_kind)}


def is_alive(node: Node) -> bool:
    try:
        node.kind()
    except RuntimeError:
        return False
    return True


def uses_of(value: Value) -> list[tuple[Node, int]]:
    """(user node, input offset) for each use of ``value``."""
    return [(use.user, use.offset) for use in value.uses()]


def users_of(value: Value) -> list[Node]:
    """The distinct nodes that read ``value``, in use order."""
    seen: dict[Node, None] = {}
    for use in value.uses():
        seen.setdefault(use.user, None)
    return list(seen)


def producer(value: Value) -> Node:
    """The node that defines ``value`` (``prim::Param`` for block inputs)."""
    return value.node()


def is_constant(value: Value, expected: Any = ...) -> bool:
    """Whether ``value`` is a ``prim::Constant`` (equal to ``expected`` if given)."""
    node = value.node()
    if node.kind() != "prim::Constant":
        return False
    if expected is ...:
        return True
    actual = value.toIValue()
    if type(expected) is bool or type(actual) is bool:
        return type(expected) is type(actual) and actual == expected
    return actual == expected


def constant_value(value: Value) -> Any:
    """The Python value of a constant; raises ValueError for a non-constant."""
    if value.node().kind() != "prim::Constant":
        raise ValueError(f"%{value.debugName()} is not a constant")
    return value.toIValue()


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
        resolved = [v if isinstance(v, Value) else graph.insertConstant(v) for v in inputs]
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
        return graph.insertConstant(value)


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


def nodes_before(end: Node, stop: Node | None) -> list[Node]:
    """Nodes of ``end``'s block from just after ``stop`` up to ``end`` (excluded), in order.

    Walks backwards from ``end``, so the cost is the number of nodes returned;
    ``stop`` None means from the start of the block.
    """
    found: list[Node] = []
    node = end.prev()
    param = end.owningBlock().paramNode()
    while node != param and (stop is None or node != stop):
        found.append(node)
        node = node.prev()
    found.reverse()
    return found


_HIERARCHY_ENTRY = re.compile(r"([^.()]+)\([^()]*\)")
# Call-stack entries that name no submodule: a method called on the same
# module, and a free function.
_NOT_SUBMODULES = frozenset({"SELF", "UNKNOWN_INSTANCE"})


def module_path_of(node: Node) -> str:
    """Dotted path of the submodule whose code created ``node``; "" for the root or when unknown.

    Inlined graphs keep each node's module call stack
    (``getModuleHierarchy()``, e.g. ``"block(Block).conv(Conv2d).SELF(Conv2d)"``
    gives ``"block.conv"``; ``SELF`` and ``UNKNOWN_INSTANCE`` entries are a
    method of the same module and a free function). Traced nodes that were
    never inlined carry a scope instead (``"__module.block/__module.block.conv"``).
    Both are in-memory metadata: a graph loaded with ``torch.jit.load`` has neither.
    """
    hierarchy = node.getModuleHierarchy()
    if hierarchy:
        return ".".join(name for name in _HIERARCHY_ENTRY.findall(hierarchy) if name not in _NOT_SUBMODULES)
    innermost = node.scopeName().rsplit("/", 1)[-1]
    if innermost == "__module" or not innermost.startswith("__module."):
        return ""
    return innermost[len("__module."):]


_SCRIPTED_SOURCE = re.compile(r'File "([^"]+)", line (\d+)')
_TRACED_SOURCE = re.compile(r"^(.+)\((\d+)\): ")


def strip_serialized(source_range: str) -> str:
    """A node's source range without the location in the saved model's code that loading appends."""
    original, _, _ = source_range.partition("\nSerialized")
    return original if original else source_range


def source_location(node: Node) -> str | None:
    """``"file.py:line"`` of the user code that made ``node`` (scripted or traced), when the graph kept it."""
    text = strip_serialized(node.sourceRange() or "")
    found = _SCRIPTED_SOURCE.search(text) or _TRACED_SOURCE.search(text.splitlines()[0] if text else "")
    if not found:
        return None
    return f"{found.group(1).rsplit('/', 1)[-1]}:{found.group(2)}"

"""Walking and reading TorchScript graphs (``torch._C.Graph`` / ``Block``); ``qgraph.ir.edit`` changes them.

Everything here is about IR structure only; nothing knows about quantization.
Node wrappers handed out by ``torch._C`` are stable for the life of the node
(the same Python object comes back for the same node, and a destroyed node
raises "has been invalidated" when touched), so nodes can be kept in sets and
dicts while a pass runs.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any, cast

import torch

Graph = torch._C.Graph
Block = torch._C.Block
Node = torch._C.Node
Value = torch._C.Value
TENSOR = torch._C.TensorType.get()

__all__ = [
    "walk",
    "nested_blocks",
    "ivalue",
    "source_text",
    "tensor_sizes",
    "inputs_of",
    "outputs_of",
    "NodeIndex",
    "uses_of",
    "is_alive",
    "is_constant",
    "nodes_before",
    "stack_order",
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
        "prim::Constant",
        "prim::GetAttr",
        "prim::SetAttr",
        "prim::CallMethod",
        "prim::CallFunction",
        "prim::ListConstruct",
        "prim::ListUnpack",
        "prim::TupleConstruct",
        "prim::TupleUnpack",
        "prim::TupleIndex",
        "prim::TupleSlice",
        "prim::DictConstruct",
        "prim::dtype",
        "prim::device",
        "prim::layout",
        "prim::NumToTensor",
        "prim::RaiseException",
        "prim::unchecked_cast",
        "prim::Uninitialized",
        "prim::isinstance",
        "prim::Print",
        "prim::max",
        "prim::min",
        "prim::data",
        "prim::is_cuda",
        "prim::fork",
        "prim::Enter",
        "prim::Exit",
        "prim::CreateObject",
        "prim::ListIndex",
        "prim::requires_grad",
        "prim::shape",
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


# torch._C's stubs miss or mistype a few bindings; these read them as they are.


def ivalue(value: Value) -> Any:
    """The Python value of a constant (``Value.toIValue``)."""
    return cast(Any, value).toIValue()


def source_text(node: Node) -> str:
    """The source range a node carries, as text ("" when it has none)."""
    return str(node.sourceRange() or "")


def tensor_sizes(type_: Any) -> list[int | None] | None:
    """The sizes a tensor type records (None where unknown), or None for a type without them."""
    return cast(Any, type_).varyingSizes() if type_.kind() == "TensorType" else None


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


def stack_order(graph_or_block: Graph | Block, kinds: Iterable[str] | None = None) -> list[Node]:
    """Nodes in the order PyTorch's quantization passes visit them (of ``kinds``, if given).

    A block's own nodes first, then the blocks nested in them, the last
    pushed first (a stack), which decides the order names are handed out.
    """
    wanted = None if kinds is None else frozenset(kinds)
    order: list[Node] = []
    stack = [graph_or_block.block() if isinstance(graph_or_block, Graph) else graph_or_block]
    while stack:
        block = stack.pop()
        for node in block.nodes():
            if wanted is None or node.kind() in wanted:
                order.append(node)
            stack.extend(nested_blocks(node))
    return order


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


def is_constant(value: Value, expected: Any = ...) -> bool:
    """Whether ``value`` is a ``prim::Constant`` (equal to ``expected`` if given)."""
    node = value.node()
    if node.kind() != "prim::Constant":
        return False
    if expected is ...:
        return True
    actual = ivalue(value)
    if type(expected) is bool or type(actual) is bool:
        return type(expected) is type(actual) and actual == expected
    return actual == expected


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
    return innermost[len("__module.") :]


_SCRIPTED_SOURCE = re.compile(r'File "([^"]+)", line (\d+)')
_TRACED_SOURCE = re.compile(r"^(.+)\((\d+)\): ")


def strip_serialized(source_range: str) -> str:
    """A node's source range without the location in the saved model's code that loading appends."""
    original, _, _ = source_range.partition("\nSerialized")
    return original if original else source_range


def source_location(node: Node) -> str | None:
    """``"file.py:line"`` of the user code that made ``node`` (scripted or traced), when the graph kept it."""
    text = strip_serialized(source_text(node))
    found = _SCRIPTED_SOURCE.search(text) or _TRACED_SOURCE.search(text.splitlines()[0] if text else "")
    if not found:
        return None
    return f"{found.group(1).rsplit('/', 1)[-1]}:{found.group(2)}"

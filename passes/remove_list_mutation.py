"""Fold ``append`` / constant-index ``_set_item`` on a fresh list into its ``ListConstruct``.

Scripted code builds lists by mutation; observer insertion and quantization
follow values through ``prim::ListConstruct`` but not through mutation, so
(like the reference's preprocessing) a list that is built and then only
appended to is rewritten as one construct::

    %l = prim::ListConstruct(%a)
    %1 = aten::append(%l, %b)
    %y = aten::cat(%l, %dim)

becomes::

    %l = prim::ListConstruct(%a, %b)
    %y = aten::cat(%l, %dim)

The rewrite applies when nothing reads the list between its construct and
the mutation and no call or side effect sits in between (the construct then
moves down to the mutation);
appends inside a loop body to a list built outside stay, which is why a
scripted loop-built list feeding ``cat`` keeps ``cat`` in float.
"""

from __future__ import annotations

from qgraph.ir import Block, Graph, Node, Value, inputs_of, is_constant, ivalue, nested_blocks, set_inputs, walk

# Calls and side effects are opaque to alias analysis: the reference will not
# move a list's construction past them, so a mutation after one stays.
_BARRIERS = frozenset(
    {"prim::CallMethod", "prim::CallFunction", "prim::Print", "prim::RaiseException", "aten::warn", "prim::fork"}
)


def _ancestor_in(node: Node, block: Block) -> Node | None:
    """The node of ``block`` that is ``node`` or contains it."""
    while node is not None:
        if node.owningBlock() == block:
            return node
        node = node.owningBlock().owningNode()
    return None


def _mutation_target(node: Node) -> Node | None:
    kind = node.kind()
    if kind == "aten::append" or (
        kind == "aten::_set_item" and is_constant(node.inputsAt(1)) and type(ivalue(node.inputsAt(1))) is int
    ):
        construct = node.inputsAt(0).node()
        if construct.kind() == "prim::ListConstruct":
            return construct
    return None


def _nothing_in_between(construct: Node, mutation: Node, lst: Value) -> bool:
    block = construct.owningBlock()
    if mutation.owningBlock() != block:
        return False
    between = set()
    node = mutation.prev()
    while node != construct:
        if node == block.paramNode():
            return False  # the mutation comes before the construct: not ours to move
        if node.kind() in _BARRIERS or any(
            inner.kind() in _BARRIERS for sub in nested_blocks(node) for inner in walk(sub)
        ):
            return False
        between.add(node)
        node = node.prev()
    for use in lst.uses():
        if use.user == mutation:
            continue
        if _ancestor_in(use.user, block) in between:
            return False
    return True


def _fold_block(block: Block) -> int:
    folded = 0
    for node in list(block.nodes()):
        for sub in nested_blocks(node):
            folded += _fold_block(sub)
        construct = _mutation_target(node)
        if construct is None:
            continue
        lst = node.inputsAt(0)
        if not _nothing_in_between(construct, node, lst):
            continue
        if node.kind() == "aten::append":
            set_inputs(construct, [*inputs_of(construct), node.inputsAt(1)])
        else:
            index: int = ivalue(node.inputsAt(1))
            size = construct.inputsSize()
            if index < 0:
                index += size
            if not 0 <= index < size:
                continue
            construct.replaceInput(index, node.inputsAt(2))
        construct.moveBefore(node)
        node.output().replaceAllUsesWith(lst)
        node.destroy()
        folded += 1
    return folded


def remove_list_mutation(graph: Graph) -> int:
    """Rewrite in place; returns the number of mutations folded."""
    return _fold_block(graph.block())

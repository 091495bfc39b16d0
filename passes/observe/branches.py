"""Ifs whose branches are observed differently get a continuation per branch, before observers go in.

The ops after such an ``if`` see both sides' values; observed once, they
would get one range for both (a conv side would be quantized with the range
an ``exp`` side widened). Moving the rest of the block into each branch
gives every side its own observers::

    %y = prim::If(%c)            %r = prim::If(%c)
      block0(): -> (%a)            block0(): %r.0 = f(%a) -> (%r.0)
      block1(): -> (%b)            block1(): %r.1 = f(%b) -> (%r.1)
    %r = f(%y)                   -> (%r)
    -> (%r)

Ifs the reference accepts (consistent branches) are left alone, so their
bits stay the reference's. Each graph grows by at most its own size (or
``_MIN_CONTINUATION_BUDGET`` nodes); past that, an ``if`` keeps one
continuation for both sides. The reference raises "branches for `if`
should return values that are observed consistently" instead.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

from torch.ao.quantization import QConfig

from passes.observe.analysis import ObserverAnalysis
from passes.observe.placement import ObserverPlacement
from qgraph.ir import (
    CppModule,
    Graph,
    Node,
    Value,
    call_graph,
    clone_node,
    inputs_of,
    is_alive,
    nested_blocks,
    outputs_of,
    set_inputs,
    walk,
)
from qgraph.quant.observed_values import is_tensor_or_tensor_list
from qgraph.quant.quant_type import QuantType

__all__ = ["place_observers"]

# Rounds of "find the ifs whose branches disagree, move their continuations":
# each round can expose an outer `if` (whose branch now ends in the inner one).
_MAX_CONTINUATION_ROUNDS = 8
# Nodes a graph may gain by moved continuations: its own size, and at least this.
_MIN_CONTINUATION_BUDGET = 1000


def _nested_nodes(node: Node) -> Iterator[Node]:
    for block in nested_blocks(node):
        yield from walk(block)


def _uses_any(nodes: list[Node], values: set[Value]) -> bool:
    return any(v in values for node in nodes for inner in [node, *_nested_nodes(node)] for v in inputs_of(inner))


def _node_count(nodes: list[Node]) -> int:
    return sum(1 + sum(1 for _ in _nested_nodes(node)) for node in nodes)


def _renamed(env: dict[Value, Value], value: Value) -> Value:
    return env.get(value, value)


def _move_continuation_into_branches(graph: Graph, if_node: Node, op_qconfigs: dict[Node, Any]) -> int:
    """Move the nodes after ``if_node`` in its block into every branch; returns the nodes added.

    Each branch gets its own copy of the rest of the block, reading that
    branch's results; the ``if`` then returns what the block returned::

        %y = prim::If(%c)            %r = prim::If(%c)
          block0(): -> (%a)            block0(): %r.0 = f(%a) -> (%r.0)
          block1(): -> (%b)            block1(): %r.1 = f(%b) -> (%r.1)
        %r = f(%y)                   -> (%r)
        -> (%r)

    Copies of an op with a qconfig of its own (``op_qconfigs``) get it too.
    """
    block = if_node.owningBlock()
    nodes = list(block.nodes())
    rest = nodes[nodes.index(if_node) + 1 :]
    returned = outputs_of(block)
    old_outputs = outputs_of(if_node)
    added = _node_count(rest) * (len(nested_blocks(if_node)) - 1)
    for branch in nested_blocks(if_node):
        env: dict[Value, Value] = dict(zip(old_outputs, outputs_of(branch)))
        branch_return = branch.returnNode()
        for node in rest:
            clone = clone_node(graph, node, functools.partial(_renamed, env))
            clone.insertBefore(branch_return)
            for old_node, new_node in zip([node, *_nested_nodes(node)], [clone, *_nested_nodes(clone)]):
                if old_node in op_qconfigs:
                    op_qconfigs[new_node] = op_qconfigs[old_node]
            for old, new in zip(outputs_of(node), outputs_of(clone)):
                new.copyMetadata(old)
                env[old] = new
        set_inputs(branch_return, [env.get(value, value) for value in returned])
    block_return = block.returnNode()
    for index, value in enumerate(returned):
        result = if_node.addOutput()
        result.copyMetadata(value)
        block_return.replaceInput(index, result)
    for node in reversed(rest):
        node.destroy()
    for index in reversed(range(len(old_outputs))):
        if_node.eraseOutput(index)
    return added


def _has_if_with_tensor_result(root: CppModule, method_name: str) -> bool:
    """Whether a method reachable from ``root.<method_name>`` has an ``if`` returning a Tensor (or list)."""
    for _, data in call_graph(root, method_name).nodes(data=True):
        for node in data["graph"].findAllNodes("prim::If", True):
            if any(is_tensor_or_tensor_list(v) for v in outputs_of(node)):
                return True
    return False


def _move_continuations(placement: ObserverPlacement, budget: dict[Graph, int]) -> bool:
    """Move the continuations of the ifs ``placement`` found inconsistent, within budget; whether any moved."""
    moved = False
    done: set[Node] = set()
    # Recorded after their branches, so reversed: an `if` later in a block,
    # or nested in a later node, moves before the one whose continuation holds it.
    for if_node, owner in reversed(placement.inconsistent_ifs):
        if if_node in done or not is_alive(if_node):
            continue
        done.add(if_node)
        block_nodes = list(if_node.owningBlock().nodes())
        rest = block_nodes[block_nodes.index(if_node) + 1 :]
        if not _uses_any(rest, set(outputs_of(if_node))):
            continue
        if owner not in budget:
            budget[owner] = max(sum(1 for _ in walk(owner)), _MIN_CONTINUATION_BUDGET)
        cost = _node_count(rest) * (len(nested_blocks(if_node)) - 1)
        if cost > budget[owner]:
            continue
        budget[owner] -= _move_continuation_into_branches(owner, if_node, placement.analysis.op_qconfigs)
        moved = True
    return moved


def _placement(
    root: CppModule, qconfigs: dict, quant_type: QuantType, method_name: str, op_qconfigs: dict
) -> ObserverPlacement:
    return ObserverPlacement(ObserverAnalysis(root, qconfigs, quant_type, method_name, op_qconfigs), method_name)


def place_observers(
    root: CppModule,
    qconfigs: dict[str, QConfig | None],
    quant_type: QuantType,
    method_name: str,
    op_qconfigs: dict[Node, QConfig | None] | None = None,
) -> ObserverPlacement:
    """Where the observers of ``root.<method_name>`` go, after moving the continuations of inconsistent ifs.

    Each round decides a placement on the graphs as they are; when it moved
    continuations, the graphs changed and the next round decides again. The
    placement returned was decided on the graphs as they are left.
    ``op_qconfigs`` gives single ops a qconfig other than their module's
    (``ObserverAnalysis``); moved continuations add their copies to it.
    """
    op_qconfigs = {} if op_qconfigs is None else op_qconfigs
    placement = _placement(root, qconfigs, quant_type, method_name, op_qconfigs)
    if not _has_if_with_tensor_result(root, method_name):
        return placement
    budget: dict[Graph, int] = {}
    for _ in range(_MAX_CONTINUATION_ROUNDS):
        if not _move_continuations(placement, budget):
            return placement
        placement = _placement(root, qconfigs, quant_type, method_name, op_qconfigs)
    return placement

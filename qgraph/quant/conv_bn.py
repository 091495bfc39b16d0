"""Conv -> BatchNorm submodule call pairs: the pattern, which pairs qualify, and what else uses a conv.

Folding for inference (``passes.fold_conv_bn``) and the swap for
quantization-aware training (``passes.qat``) find the same pairs: a
``torch.nn.Conv{n}d`` submodule call whose output feeds, and only feeds, a
``torch.nn.BatchNorm{n}d`` submodule call of the same dimensionality.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import torch

from qgraph.ir import (
    CppModule,
    Graph,
    NodeIndex,
    call_graph,
    callees_first,
    getattr_path,
    is_instance_of,
    resolve_path,
)
from qgraph.pattern import Match, compile_pattern, find_matches

__all__ = [
    "CONV_BN_CALLS",
    "ConvBnCalls",
    "conv_bn_calls",
    "FOLDABLE_PAIRS",
    "MethodInstances",
    "is_conv_bn_pair",
    "receivers_are_submodules",
    "methods_of",
    "module_use_counts",
    "pair_submodules",
]

# The conv call's output must feed only the BatchNorm call: the matcher
# rejects a match whose inner value (%conv_out) is used outside it.
CONV_BN_CALLS = """graph(%conv, %batchnorm, %input):
    %conv_out = prim::CallMethod[name="forward"](%conv, %input)
    %bn_out = prim::CallMethod[name="forward"](%batchnorm, %conv_out)
    return (%bn_out)"""

FOLDABLE_PAIRS = (
    (torch.nn.Conv1d, torch.nn.BatchNorm1d),
    (torch.nn.Conv2d, torch.nn.BatchNorm2d),
    (torch.nn.Conv3d, torch.nn.BatchNorm3d),
)


def is_conv_bn_pair(conv: Any, bn: Any) -> bool:
    """Exactly torch.nn's Conv{n}d followed by BatchNorm{n}d, same n."""
    return any(is_instance_of(conv, c) and is_instance_of(bn, b) for c, b in FOLDABLE_PAIRS)


def receivers_are_submodules(match: Match) -> bool:
    """Both calls go to submodules reached from ``%self`` (not to values passed in)."""
    return getattr_path(match["conv"]) is not None and getattr_path(match["batchnorm"]) is not None


def pair_submodules(match: Match, instance: CppModule) -> tuple[Any, Any]:
    """The conv and the BatchNorm a match calls, in one instance of the graph's class type."""
    conv, bn = getattr_path(match["conv"]), getattr_path(match["batchnorm"])
    assert conv is not None and bn is not None, "receivers_are_submodules admitted the match"
    return resolve_path(instance, conv), resolve_path(instance, bn)


@dataclass
class MethodInstances:
    """A method graph and every instance (by dotted path) whose class type it belongs to."""

    graph: Graph
    instances: dict[str, CppModule] = field(default_factory=dict)


def methods_of(root: CppModule) -> tuple[dict[tuple[str, str], MethodInstances], list[tuple[str, str]]]:
    """Each (class type, method) reachable from the root's methods, with its instances; callees first."""
    methods: dict[tuple[str, str], MethodInstances] = {}
    calls = nx.DiGraph()
    for name in root._method_names():
        graph = call_graph(root, name)
        calls.add_edges_from(graph.edges)
        calls.add_nodes_from(graph.nodes)
        for key, data in graph.nodes(data=True):
            method = methods.setdefault(key, MethodInstances(data["graph"]))
            for path in data["instances"]:
                method.instances.setdefault(path, resolve_path(root, path))
    return methods, callees_first(calls)


def module_use_counts(methods: dict[tuple[str, str], MethodInstances]) -> dict[CppModule, int]:
    """How many times each submodule instance is read (called, or an attribute taken) in all graphs."""
    counts: dict[CppModule, int] = {}
    for method in methods.values():
        reads = []
        for node in NodeIndex(method.graph).of_kind("prim::GetAttr"):
            value = node.output()
            if value.type().kind() != "ClassType":
                continue
            path = getattr_path(value)
            if path is not None:
                reads.append((path, len(value.uses())))
        for instance in method.instances.values():
            for path, uses in reads:
                target = resolve_path(instance, path)
                if isinstance(target, CppModule):
                    counts[target] = counts.get(target, 0) + uses
    return counts


@dataclass
class ConvBnCalls:
    """The Conv -> BatchNorm call pairs of a module tree, each match with the graph holding it, callees first."""

    methods: dict[tuple[str, str], MethodInstances]
    module_uses: dict[CppModule, int]
    matches: list[tuple[MethodInstances, Match]]


def conv_bn_calls(root: CppModule) -> ConvBnCalls:
    """Every call of a submodule conv whose output only a submodule BatchNorm call reads, in every method."""
    methods, order = methods_of(root)
    pattern = compile_pattern(CONV_BN_CALLS)
    matches = []
    for key in order:
        method = methods[key]
        for match in find_matches(method.graph, pattern, NodeIndex(method.graph)):
            if receivers_are_submodules(match):
                matches.append((method, match))
    return ConvBnCalls(methods, module_use_counts(methods), matches)

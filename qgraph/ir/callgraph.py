"""The call graph of a script module's methods, as a ``networkx.DiGraph``.

Nodes are ``(class type name, method name)`` pairs, so instances that share a
class type share a node; each node carries ``graph`` (the method's graph) and
``instances`` (dotted paths of the instances of that type reached). An edge
``caller -> callee`` carries the ``prim::CallMethod`` nodes that make the
call. Passes walk ``callees_first`` so a callee is finished before its callers
look at it.
"""

from __future__ import annotations

import networkx as nx

from qgraph.ir.module import CppModule, method_calls, method_graph, resolve_path

__all__ = ["call_graph", "callees_first", "method_key"]


def method_key(module: CppModule, method: str) -> tuple[str, str]:
    return (module._type().qualified_name(), method)


def call_graph(root: CppModule, method: str = "forward") -> nx.DiGraph:
    """Every method reachable from ``root.<method>`` through ``prim::CallMethod``.

    Each (class type, method) graph is walked once, however many instances
    share it; instances are then followed through the calls found there, so
    the cost is the size of the distinct graphs plus the number of calls
    made per instance.
    """
    graph = nx.DiGraph()
    calls_by_key: dict[tuple[str, str], list] = {}
    instance_sets: dict[tuple[str, str], set[str]] = {}
    stack = [("", root, method)]
    while stack:
        path, module, name = stack.pop()
        key = method_key(module, name)
        if key not in graph:
            graph.add_node(key, graph=method_graph(module, name), module=module, instances=[])
        visited = instance_sets.setdefault(key, set())
        if path in visited:
            continue
        visited.add(path)
        graph.nodes[key]["instances"].append(path)
        first_visit = key not in calls_by_key
        if first_visit:
            # A call on a value that is not a submodule of self has no receiver path.
            calls_by_key[key] = [c for c in method_calls(graph.nodes[key]["graph"]) if c[1] is not None]
        for call, receiver, callee_name in calls_by_key[key]:
            callee = resolve_path(module, receiver)
            if not isinstance(callee, CppModule):
                continue
            callee_key = method_key(callee, callee_name)
            callee_path = ".".join([p for p in [path, *receiver] if p])
            if callee_key not in graph:
                graph.add_node(callee_key, graph=method_graph(callee, callee_name), module=callee, instances=[])
            if not graph.has_edge(key, callee_key):
                graph.add_edge(key, callee_key, calls=[call])
            elif first_visit:
                graph.edges[key, callee_key]["calls"].append(call)
            stack.append((callee_path, callee, callee_name))
    return graph


def callees_first(graph: nx.DiGraph) -> list[tuple[str, str]]:
    """Method keys ordered so that every callee precedes its callers."""
    return list(reversed(list(nx.topological_sort(graph))))

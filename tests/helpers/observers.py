"""Reading observers back out of a prepared model, to compare two prepares.

Observer names (``_observer_N``) depend on insertion order, so prepared
models are compared by what each observer watches: for every module
instance and method, the observer calls in program order, each described by
the node that produces the observed value and the observer's class.
"""

from __future__ import annotations

import torch

from qgraph.ir import as_cpp, children_of, method_graph, named_modules, walk


def observer_names(module, prefix: str = "_observer_") -> list[str]:
    return sorted(name for name, _ in children_of(as_cpp(module)) if name.startswith(prefix))


def _describe(value) -> str:
    node = value.node()
    if node.kind() == "prim::Param":
        return f"input{value.offset()}"
    if node.kind() == "prim::GetAttr":
        return f"attr:{node.s('name')}"
    if node.kind() == "prim::CallMethod":
        return f"call:{node.s('name')}"
    if node.kind() == "prim::CallFunction":
        return "call_function:" + str(node.inputsAt(0).type()).rsplit(".", 1)[-1]
    return node.kind()


def _observer_calls(graph):
    for node in walk(graph):
        if node.kind() != "prim::CallMethod":
            continue
        receiver = node.inputsAt(0).node()
        if receiver.kind() == "prim::GetAttr" and receiver.s("name").startswith("_observer_"):
            yield receiver.s("name"), node.inputsAt(1)


def observed_values(model) -> dict[str, list[tuple[str, str, str]]]:
    """{module path: [(method, observed value's producer, observer class), ...]} in program order."""
    root = as_cpp(model)
    found: dict[str, list[tuple[str, str, str]]] = {}
    for path, module in named_modules(root):
        if "_observer_" in path:
            continue
        entries = []
        for method in module._method_names():
            for name, value in _observer_calls(method_graph(module, method)):
                observer = module.getattr(name)
                kind = observer._type().qualified_name().rsplit(".", 1)[-1]
                entries.append((method, _describe(value), kind))
        found[path] = entries
    return found


def observer_states(model) -> dict[tuple[str, int], dict[str, torch.Tensor]]:
    """{(module path, k): tensor state of the k-th observer called in that module's methods}."""
    root = as_cpp(model)
    states = {}
    for path, module in named_modules(root):
        if "_observer_" in path:
            continue
        k = 0
        for method in module._method_names():
            for name, _ in _observer_calls(method_graph(module, method)):
                observer = module.getattr(name)
                state = {}
                for attr in ("min_val", "max_val", "histogram", "min_vals", "max_vals"):
                    if observer.hasattr(attr):
                        state[attr] = observer.getattr(attr).clone()
                states[(path, k)] = state
                k += 1
    return states


def graph_texts(model) -> dict[tuple[str, str], str]:
    """Every method graph of every instance, as text (to check a model was left untouched)."""
    root = as_cpp(model)
    return {
        (path, method): str(method_graph(module, method))
        for path, module in named_modules(root)
        for method in module._method_names()
    }

"""Give every call of a submodule its own instance.

Observers and quantization parameters are attached to module instances, so a
submodule called twice (``self.relu`` applied at two places) would pool the
statistics of both call sites. This pass keeps the first call of each
instance and points every later call at a deep copy registered next to the
original, named ``<name>_<n>`` with the first free ``n``:

    before                                               after
    %relu = prim::GetAttr[name="relu"](%self)            %relu = prim::GetAttr[name="relu"](%self)
    %a = prim::CallMethod[name="forward"](%relu, %x)     %a = prim::CallMethod[name="forward"](%relu, %x)
    %b = aten::sub(%a, %c, %one)                         %relu.1 = prim::GetAttr[name="relu_0"](%self)
    %relu.1 = prim::GetAttr[name="relu"](%self)          %b = aten::sub(%a, %c, %one)
    %y = prim::CallMethod[name="forward"](%relu.1, %b)   %y = prim::CallMethod[name="forward"](%relu.1, %b)

A deep copy shares the class type of the original (same code), with its own
attribute values. Outputs do not change.

Scope follows the reference: every method of the module handed in, with
calls reaching submodules through ``self.a.b.c`` paths; a submodule is
identified by its attribute path. Calls made inside submodules' own methods
keep sharing their instance unless ``nested=True``, because deduplicating
them gives those calls separate observers, which changes the quantized
bits relative to the reference.

This pass is no pattern rewrite: whether a call is a duplicate depends on
every other call of the method, not on a local shape.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

from qgraph.ir import (
    CppModule,
    Graph,
    Node,
    as_cpp,
    call_graph,
    getattr_path,
    insert_getattr,
    method_graph,
    named_modules,
    register_submodule,
    resolve_path,
    stack_order,
)

__all__ = ["dedup_module_uses"]


def dedup_module_uses(module: Any, *, nested: bool = False) -> Any:
    """Point every repeated call of a submodule instance at a fresh deep copy, in place.

    ``module`` is a ScriptModule or its ``._c``; the same object is returned
    (a Python wrapper is rebuilt around the changed C++ module so that its
    submodule attributes show the copies). With ``nested=True`` the methods
    of submodules reached from ``forward`` are deduplicated as well.
    """
    root = as_cpp(module)
    if not root._has_method("forward"):
        raise ValueError(f"{root._type().qualified_name()} has no forward method")
    instances = _InstancesByType(root)
    methods_by_type: dict[str, list[str]] = {_type_name(root): list(root._method_names())}
    if nested:
        for type_name, method in call_graph(root, "forward").nodes:
            if type_name != _type_name(root):
                methods_by_type.setdefault(type_name, []).append(method)
    changed = False
    for type_name, methods in methods_by_type.items():
        owner = instances.of(type_name)[0]
        repeated = _repeated_calls(owner, methods)
        for graph, call in repeated:
            _redirect_to_copy(graph, call, instances.of(type_name), instances)
        changed |= bool(repeated)
    if changed and not isinstance(module, CppModule):
        module._reconstruct(root)
    return module


def _type_name(module: CppModule) -> str:
    return module._type().qualified_name()


class _InstancesByType:
    """Every instance of each class type in the tree, kept current as copies are added."""

    def __init__(self, root: CppModule):
        self._by_type: dict[str, list[CppModule]] = defaultdict(list)
        self.add_tree(root)

    def add_tree(self, module: CppModule) -> None:
        for _, instance in named_modules(module):
            self._by_type[_type_name(instance)].append(instance)

    def of(self, type_name: str) -> list[CppModule]:
        return self._by_type[type_name]


def _repeated_calls(owner: CppModule, methods: list[str]) -> list[tuple[Graph, Node]]:
    """(graph, ``prim::CallMethod``) for each call of an instance already called before.

    Calls are visited in the reference's order (a block's own nodes before
    the blocks nested in it) so that the same call keeps the original name.
    """
    seen: set[tuple[str, ...]] = set()
    repeated = []
    for method in methods:
        graph = method_graph(owner, method)
        for node in stack_order(graph, kinds=("prim::CallMethod",)):
            path = getattr_path(node.inputsAt(0))
            if not path or not isinstance(resolve_path(owner, path), CppModule):
                continue  # a call on self, or on a value that is not a submodule
            if tuple(path) in seen:
                repeated.append((graph, node))
            else:
                seen.add(tuple(path))
    return repeated


def _redirect_to_copy(graph: Graph, call: Node, owners: list[CppModule], instances: _InstancesByType) -> None:
    """Register a copy of the called instance in every owner and make ``call`` read it."""
    path = getattr_path(call.inputsAt(0))
    assert path, "only calls of submodules are repeated calls"
    parents = [resolve_path(owner, path[:-1]) for owner in owners]
    name = _free_name(parents, path[-1])
    for parent in parents:
        duplicate = copy.deepcopy(parent.getattr(path[-1]))
        register_submodule(parent, name, duplicate)
        instances.add_tree(parent.getattr(name))
    receiver = call.inputsAt(0)
    getattr_node = receiver.node()
    if len(receiver.uses()) == 1:
        getattr_node.s_("name", name)
        return
    # Traced graphs read a submodule once and call it several times; renaming
    # that read would move every call to the copy.
    fresh = insert_getattr(graph, getattr_node.input(), name, receiver.type(), before=call, source=getattr_node)
    call.replaceInput(0, fresh.output())


def _free_name(parents: list[CppModule], base: str) -> str:
    index = 0
    while any(parent.hasattr(f"{base}_{index}") for parent in parents):
        index += 1
    return f"{base}_{index}"

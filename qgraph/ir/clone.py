"""Cloning script modules with fresh class types, and unsharing class types.

TorchScript methods live on class types, and every instance of a class type
(and every ``copy.deepcopy`` of a module) shares them. A pass that rewrites a
graph therefore rewrites it for all those instances. ``clone_module`` gives a
copy whose types are new (instances that shared a type in the original still
share one in the copy); ``unshare_types`` gives chosen instances a class type
of their own, so a rewrite can apply to them and not to their siblings.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from qgraph.ir.graph import walk
from qgraph.ir.module import CppModule, children_of, method_graph, resolve_path

__all__ = ["clone_module", "unshare_types"]


def _clone(module: CppModule, ignored_attributes: list[str]) -> CppModule:
    # The one binding of C++ Module::clone(inplace=false), which remaps every
    # class type in the tree to a fresh one while keeping sharing intact.
    return torch._C._hack_do_not_use_clone_module_with_class(module, [], ignored_attributes)


def clone_module(module: CppModule) -> CppModule:
    """A deep copy of ``module`` with new class types, methods and tensors."""
    return _clone(module, [])


def unshare_types(root: CppModule, paths: Iterable[str]) -> CppModule:
    """Give the instance at each dotted path its own class type.

    The attribute that holds an instance is typed by its parent's class type,
    so each parent on the way up gets a new type too; instances elsewhere that
    shared one of those types keep theirs. Returns the new root module (the
    root's own type changes as well); the old root must not be used after.
    """
    tree: dict = {}
    for path in paths:
        if not path:
            continue
        node = tree
        for name in path.split("."):
            node = node.setdefault(name, {})
    if not tree:
        return root
    return _rebuild(root, tree, whole=False)


def _rebuild(module: CppModule, changes: dict, whole: bool) -> CppModule:
    """A copy of ``module`` with a new type, children rebuilt where ``changes`` says."""
    if whole or not changes:
        return clone_module(module)
    children = children_of(module)
    declared = _declared_child_types(module)
    fresh = _clone(module, [name for name, _ in children])
    for name, child in children:
        if name in changes:
            sub = changes[name]
            new_child = _rebuild(child, sub, whole=not sub)
            type_ = declared.get(name)
            if type_ is None or type_.kind() == "ClassType":
                type_ = new_child._type()
            fresh._register_attribute(name, type_, new_child)
        else:
            type_ = declared.get(name) or child._type()
            fresh._register_attribute(name, type_, child)
    _retype_child_reads(fresh, {name: resolve_path(fresh, name) for name in changes})
    return fresh


def _declared_child_types(module: CppModule) -> dict:
    """The static type each method graph gives ``self.<child>`` (interfaces stay interfaces)."""
    found = {}
    for method in module._method_names():
        graph = method_graph(module, method)
        self_value = graph.inputs().__next__()
        for use in self_value.uses():
            node = use.user
            if node.kind() == "prim::GetAttr":
                found.setdefault(node.s("name"), node.output().type())
    return found


def _retype_child_reads(module: CppModule, new_children: dict[str, CppModule]) -> None:
    for method in module._method_names():
        graph = method_graph(module, method)
        self_value = graph.inputs().__next__()
        for node in walk(graph):
            if (
                node.kind() == "prim::GetAttr"
                and node.input() == self_value
                and node.s("name") in new_children
                and node.output().type().kind() == "ClassType"
            ):
                node.output().setType(new_children[node.s("name")]._type())

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
from typing import Any, cast

import torch

from qgraph.ir.graph import nested_blocks, outputs_of, walk
from qgraph.ir.module import CppModule, children_of, getattr_path, method_graph, named_modules, resolve_path

__all__ = ["clone_module", "drop_attributes", "unshare_types"]

# Private bindings that torch._C's stubs leave out or type narrower than they are.
_BINDINGS: Any = torch._C


def _clone(module: CppModule, ignored_attributes: list[str], readded: bool = False) -> CppModule:
    # The one binding of C++ Module::clone(inplace=false), which remaps every
    # class type in the tree to a fresh one while keeping sharing intact.
    if not ignored_attributes or not readded:
        return _BINDINGS._hack_do_not_use_clone_module_with_class(module, [], ignored_attributes)
    # Module::clone refuses to drop an attribute that a method reads, and it
    # recognises such reads by the receiver being named "self". Children
    # dropped here are registered again right after, so the reads stay valid:
    # hide the name for the duration of the clone.
    renamed = []
    for name in module._method_names():
        receiver = next(method_graph(module, name).inputs())
        if receiver.debugName() == "self":
            receiver.setDebugName("self_module")
            renamed.append(receiver)
    try:
        clone = _BINDINGS._hack_do_not_use_clone_module_with_class(module, [], ignored_attributes)
    finally:
        for receiver in renamed:
            receiver.setDebugName("self")
    for name in clone._method_names():
        receiver = next(method_graph(clone, name).inputs())
        if receiver.debugName().startswith("self_module"):
            receiver.setDebugName("self")
    return clone


def clone_module(module: CppModule, *, share_values: bool = False) -> CppModule:
    """A deep copy of ``module`` with new class types, methods and tensors.

    With ``share_values`` the copy has new class types and methods but holds
    the original's attribute values (parameters, buffers, other objects), as
    C++ ``Module::clone(inplace=true)`` does: graphs can then be rewritten
    without touching the original's types, which scripting also hands to
    later instances of the same Python class.
    """
    clone = _clone(module, [])
    if share_values:
        for (_, original), (_, copy) in zip(named_modules(module), named_modules(clone)):
            _share_values(original, copy)
    return clone


def _share_values(original: CppModule, copy: CppModule, skip: Iterable[str] = ()) -> None:
    """Point ``copy``'s attributes (not its submodules, not ``skip``) at ``original``'s values."""
    skipped = set(skip) | {name for name, _ in children_of(original)}
    # The debug iterators list the module's own attributes, submodules included.
    for name, value in _BINDINGS._jit_debug_module_iterators(original)["named_attributes"]:
        if name not in skipped:
            copy.setattr(name, value)


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
    fresh = _clone(module, [name for name, _ in children], readded=True)
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
    found: dict[str, Any] = {}
    for method in module._method_names():
        graph = method_graph(module, method)
        self_value = graph.inputs().__next__()
        for use in self_value.uses():
            node = use.user
            if node.kind() == "prim::GetAttr":
                found.setdefault(node.s("name"), node.output().type())
    return found


def _retype_child_reads(module: CppModule, new_children: dict[str, CppModule]) -> None:
    """Give every read of a rebuilt child, or of anything below it, the type it now has.

    A method may reach a grandchild directly (``self.block.keep`` where the
    ``block`` container has no methods of its own), so whole ``prim::GetAttr``
    chains from ``%self`` are followed, not just the first step.
    """
    for method in module._method_names():
        graph = method_graph(module, method)
        for node in walk(graph):
            if node.kind() != "prim::GetAttr" or node.output().type().kind() != "ClassType":
                continue
            path = getattr_path(node.output())
            if not path or path[0] not in new_children:
                continue
            target = resolve_path(module, path)
            if isinstance(target, CppModule):
                node.output().setType(target._type())


def drop_attributes(root: CppModule, names_by_type: dict[str, set[str]]) -> CppModule:
    """A copy of ``root`` without the named attributes, which must be unused by every method.

    ``names_by_type`` maps a class type's qualified name to the attribute
    names to drop from it (a class-type property, so every instance of that
    type loses them). Instances that shared a class type share the new one,
    so one method graph keeps serving them all. The copy holds the original
    attribute values (tensors are not copied). Returns the new root; the old
    one must not be used after.
    """
    new_types: dict[str, object] = {}
    rebuilt = _drop(root, names_by_type, new_types, {})
    # Method graphs belong to class types: retype each type's graphs once.
    retyped: set[str] = set()
    for _, module in named_modules(rebuilt):
        type_name = module._type().qualified_name()
        if type_name in retyped:
            continue
        retyped.add(type_name)
        for method in module._method_names():
            _retype_graph(method_graph(module, method), new_types)
    return rebuilt


def _drop(
    module: CppModule,
    names_by_type: dict[str, set[str]],
    new_types: dict[str, object],
    attribute_names: dict[str, list[str]],
) -> CppModule:
    old_name = module._type().qualified_name()
    dropped = set(names_by_type.get(old_name, ()))
    children = [
        (name, _drop(child, names_by_type, new_types, attribute_names))
        for name, child in children_of(module)
        if name not in dropped
    ]
    new_type = new_types.get(old_name)
    if new_type is None:
        declared = _declared_child_types(module)
        fresh = _clone(module, [name for name, _ in children] + sorted(dropped), readded=True)
        _share_values(module, fresh, skip=dropped)
        for name, child in children:
            type_ = declared.get(name)
            if type_ is None or type_.kind() == "ClassType":
                type_ = child._type()
            fresh._register_attribute(name, type_, child)
        new_types[old_name] = fresh._type()
        return fresh
    fresh = _BINDINGS._create_module_with_type(new_type)
    new_children = dict(children)
    names = attribute_names.get(old_name)
    if names is None:
        # The debug iterators list the whole subtree; read the names once per type.
        names = [name for name, _ in _BINDINGS._jit_debug_module_iterators(module)["named_attributes"]]
        attribute_names[old_name] = names
    for name in names:
        if name in dropped:
            continue
        fresh.setattr(name, new_children[name] if name in new_children else module.getattr(name))
    return fresh


def _retype_graph(graph: torch._C.Graph, new_types: dict) -> None:
    """Point every value typed with a replaced class type at its replacement."""

    def retype(value: torch._C.Value) -> None:
        ty = value.type()
        if ty.kind() == "ClassType":
            new = new_types.get(cast(Any, ty).qualified_name())
            if new is not None and new is not ty:
                value.setType(new)

    for value in graph.inputs():
        retype(value)
    for node in walk(graph):
        for value in outputs_of(node):
            retype(value)
        for block in nested_blocks(node):
            for value in block.inputs():
                retype(value)

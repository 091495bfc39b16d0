"""Script modules: submodule lookup from graph values, attributes, method calls.

A method graph reaches its submodules through chains of ``prim::GetAttr``
starting at ``%self`` (the graph's first input). These helpers turn such a
chain into the submodule instance it names and back, and register new
attributes and submodules with their TorchScript types.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from qgraph.ir.graph import Graph, Node, Value, walk

if TYPE_CHECKING:

    class CppModule(torch._C.ScriptModule):
        """``torch._C.ScriptModule`` with the bindings its shipped stubs leave out."""

        def hasattr(self, name: str) -> bool: ...
        def getattr(self, name: str) -> Any: ...
        def _has_method(self, name: str) -> bool: ...
        def _register_attribute(self, name: str, type_: Any, value: Any) -> None: ...
        def _reconstruct(self, module: Any) -> None: ...

else:
    CppModule = torch._C.ScriptModule

__all__ = [
    "CppModule",
    "as_cpp",
    "as_python",
    "like",
    "children_of",
    "named_modules",
    "resolve_path",
    "getattr_path",
    "submodule_for_getattr",
    "method_graph",
    "method_calls",
    "module_class_name",
    "class_name_of",
    "is_instance_of",
    "set_attr",
    "register_attribute",
    "register_submodule",
    "unique_attr_name",
]


def as_cpp(module: Any) -> CppModule:
    """The ``torch._C.ScriptModule`` behind a ScriptModule (or the argument itself)."""
    if isinstance(module, CppModule):
        return module
    if isinstance(module, torch.jit.ScriptModule):
        return module._c
    raise TypeError(f"expected a TorchScript module, got {type(module).__name__}")


def as_python(module: Any) -> torch.jit.ScriptModule:
    """A ``torch.jit.RecursiveScriptModule`` wrapping ``module``."""
    if isinstance(module, torch.jit.ScriptModule):
        return module
    return torch.jit._recursive.wrap_cpp_module(module)


def like(result: CppModule, original: Any) -> Any:
    """``result`` as the same kind of object as ``original`` (Python wrapper or ``torch._C``)."""
    return as_python(result) if isinstance(original, torch.jit.ScriptModule) else result


def children_of(module: CppModule) -> list[tuple[str, CppModule]]:
    """Direct submodules as (attribute name, module), in attribute order."""
    return list(torch._C.ModuleDict(module).items())


def named_modules(module: CppModule, prefix: str = "") -> Iterator[tuple[str, CppModule]]:
    """(dotted path, module) for ``module`` and every submodule, parents first."""
    yield prefix, module
    for name, child in children_of(module):
        yield from named_modules(child, f"{prefix}.{name}" if prefix else name)


def instances_by_type(module: CppModule) -> dict[str, list[CppModule]]:
    """Every module of the tree (``module`` included), grouped by class type qualified name."""
    grouped: dict[str, list[CppModule]] = {}
    for _, instance in named_modules(module):
        grouped.setdefault(instance._type().qualified_name(), []).append(instance)
    return grouped


def resolve_path(module: CppModule, path: str | list[str] | tuple[str, ...]) -> Any:
    """The attribute at a dotted path (or list of names) below ``module``."""
    names = path.split(".") if isinstance(path, str) else list(path)
    target: Any = module
    for name in names:
        if not name:
            continue
        target = target.getattr(name)
    return target


def getattr_path(value: Value) -> list[str] | None:
    """Attribute names of the ``prim::GetAttr`` chain producing ``value`` from ``%self``.

    ``[]`` for ``%self`` itself; None when ``value`` is not such a chain.
    """
    names: list[str] = []
    node = value.node()
    while node.kind() == "prim::GetAttr":
        names.append(node.s("name"))
        value = node.input()
        node = value.node()
    if node.kind() != "prim::Param" or value.offset() != 0:
        return None
    if node.owningBlock().owningNode() is not None:
        return None  # a block input, not the method's %self
    names.reverse()
    return names


def submodule_for_getattr(module: CppModule, value: Value) -> CppModule | None:
    """The submodule instance of ``module`` that ``value`` names, or None.

    ``module`` is the instance whose method graph contains ``value``.
    """
    path = getattr_path(value)
    if path is None:
        return None
    target: Any = module
    for name in path:
        if not isinstance(target, CppModule) or not target.hasattr(name):
            return None
        target = target.getattr(name)
    return target if isinstance(target, CppModule) else None


def method_graph(module: CppModule, name: str = "forward") -> Graph:
    return module._get_method(name).graph


def method_calls(graph: Graph) -> list[tuple[Node, list[str] | None, str]]:
    """Every ``prim::CallMethod``: (node, receiver's attribute path or None, method name)."""
    return [
        (node, getattr_path(node.inputsAt(0)), node.s("name"))
        for node in walk(graph)
        if node.kind() == "prim::CallMethod"
    ]


_MANGLE = re.compile(r"___torch_mangle_\d+\.")


def module_class_name(module: CppModule) -> str:
    """The Python class a script module was made from, e.g. ``torch.nn.modules.conv.Conv2d``."""
    return class_name_of(module._type())


def class_name_of(class_type: Any) -> str:
    """The Python class a TorchScript class type was compiled from, e.g. ``torch.nn.modules.conv.Conv2d``."""
    return _MANGLE.sub("", class_type.qualified_name()).removeprefix("__torch__.")


def is_instance_of(module: Any, *classes: type) -> bool:
    """Whether a script module was compiled from one of ``classes`` (exactly, not a subclass)."""
    if not isinstance(module, CppModule):
        return False
    name = module_class_name(module)
    return any(name == f"{cls.__module__}.{cls.__qualname__}" for cls in classes)


def set_attr(module: CppModule, name: str, value: Any, type_: Any = None) -> None:
    """Set an existing attribute, or register a new one typed ``type_`` (inferred from ``value`` if not given)."""
    if module.hasattr(name):
        module.setattr(name, value)
    else:
        register_attribute(module, name, value, type_)


def register_attribute(module: CppModule, name: str, value: Any, type_: Any = None) -> None:
    """Add attribute ``name`` to ``module``'s class type and set it on this instance.

    The type is inferred from ``value`` unless given. Other instances of the
    same class type get the attribute slot too (with no value set), as in C++.
    """
    if type_ is None:
        inferred = torch._C._jit_try_infer_type(value)
        if not inferred.success():
            raise TypeError(f"cannot infer a TorchScript type for attribute {name!r}: {inferred.reason()}")
        type_ = inferred.type()
    module._register_attribute(name, type_, value)


def register_submodule(module: CppModule, name: str, submodule: Any, type_: Any = None) -> None:
    """Add ``submodule`` as child ``name`` of ``module`` (typed as its class unless given)."""
    child = as_cpp(submodule)
    module._register_attribute(name, type_ if type_ is not None else child._type(), child)


def unique_attr_name(module: CppModule, base: str, start: int = 0) -> str:
    """``base`` followed by the first free index, e.g. ``_observer_3``."""
    index = start
    while module.hasattr(f"{base}{index}"):
        index += 1
    return f"{base}{index}"

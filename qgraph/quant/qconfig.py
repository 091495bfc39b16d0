"""QConfigs for graph mode: scripting observers and resolving ``qconfig_dict``.

A ``qconfig_dict`` maps dotted module paths to ``torch.ao.quantization.QConfig``
(or None). ``""`` is the whole model; ``"sub"`` is the submodule ``sub`` and
everything below it; the longest matching path wins, and None switches
quantization off below that path::

    {"": qconfig, "features.3": None, "head": other_qconfig}

A ``torch.ao.quantization.QConfigMapping`` is accepted wherever a
``qconfig_dict`` is, with the precedence of PyTorch's FX mode
(``qgraph.quant.qconfig_mapping``).

Observers are TorchScript modules: ``script_qconfig`` instantiates the
QConfig's activation and weight constructors (plain classes or ``with_args``
partials) and scripts them; observer insertion then copies those scripted
modules, so every observer made from one QConfig shares a class type.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch.ao.quantization import QConfig

from qgraph.ir import CppModule, as_cpp, children_of, named_modules
from qgraph.quant.mapping_resolver import MappingResolver
from qgraph.quant.qconfig_mapping import check_qconfig_mapping, is_qconfig_mapping, map_qconfigs

__all__ = [
    "script_qconfig",
    "script_qconfig_dict",
    "is_scripted_qconfig",
    "check_qconfig_dict",
    "resolve_qconfigs",
    "qconfigs_by_path",
    "qconfig_key_for_path",
    "qconfig_for_path",
    "qconfig_paths_needing_own_type",
]


def is_scripted_qconfig(qconfig: Any) -> bool:
    """Whether ``qconfig``'s activation and weight are already scripted observer modules."""
    return isinstance(qconfig, QConfig) and all(
        isinstance(part, (CppModule, torch.jit.ScriptModule)) for part in (qconfig.activation, qconfig.weight)
    )


def _script_observer(constructor: Any, role: str) -> CppModule:
    if isinstance(constructor, (CppModule, torch.jit.ScriptModule)):
        return as_cpp(constructor)
    if not callable(constructor):
        raise TypeError(f"QConfig.{role} must be an observer constructor, got {type(constructor).__name__}")
    observer = constructor()
    if not isinstance(observer, torch.nn.Module):
        raise TypeError(f"QConfig.{role}() must build an nn.Module observer, got {type(observer).__name__}")
    return torch.jit.script(observer)._c


def script_qconfig(qconfig: QConfig) -> QConfig:
    """A QConfig whose activation and weight are scripted observer instances.

    ``QConfig(activation=MinMaxObserver.with_args(...), weight=...)`` becomes
    ``QConfig(activation=<torch._C.ScriptModule>, weight=<torch._C.ScriptModule>)``.
    Parts that are already scripted modules are kept as they are.
    """
    if not isinstance(qconfig, QConfig):
        raise TypeError(f"expected a torch.ao.quantization.QConfig, got {type(qconfig).__name__}")
    return QConfig(
        activation=_script_observer(qconfig.activation, "activation"),
        weight=_script_observer(qconfig.weight, "weight"),
    )


def script_qconfig_dict(qconfig_dict: Any) -> Any:
    """``script_qconfig`` applied to every value; None values stay None (a QConfigMapping gives one back)."""
    check_qconfig_dict(qconfig_dict)
    if is_qconfig_mapping(qconfig_dict):
        return map_qconfigs(qconfig_dict, script_qconfig)
    return {key: None if qconfig is None else script_qconfig(qconfig) for key, qconfig in qconfig_dict.items()}


def check_qconfig_dict(qconfig_dict: Any) -> None:
    """Raise ValueError/TypeError when ``qconfig_dict`` is not a dict of str -> QConfig | None.

    A QConfigMapping is checked for entries graph mode cannot apply (``qgraph.quant.qconfig_mapping``).
    """
    if is_qconfig_mapping(qconfig_dict):
        check_qconfig_mapping(qconfig_dict)
        return
    if not isinstance(qconfig_dict, dict):
        raise TypeError(f"qconfig_dict must be a dict or a QConfigMapping, got {type(qconfig_dict).__name__}")
    for key, qconfig in qconfig_dict.items():
        if not isinstance(key, str):
            raise ValueError(
                f"qconfig_dict should only contain module names (str) as keys; got key {key!r} "
                f"of type {type(key).__name__}"
            )
        if qconfig is not None and not isinstance(qconfig, QConfig):
            raise TypeError(
                f"qconfig_dict[{key!r}] must be a torch.ao.quantization.QConfig or None, got {type(qconfig).__name__}"
            )


def resolve_qconfigs(module: Any, qconfig_dict: Any) -> dict[str, QConfig | None]:
    """The effective qconfig of every submodule instance, by dotted path (``""`` = root).

    A module takes the entry for its own path if there is one, else its
    parent's effective qconfig; so the longest matching dotted prefix wins
    (``"sub"`` covers ``"sub"`` and ``"sub.x"``, not ``"subway"``), a None
    entry turns quantization off below it, and a module no entry covers gets
    None. This is the reference's rule.

    A key that names no submodule is almost always a typo, but the reference
    ignores such keys silently and models are often shared with configs
    written for a sibling variant; so it is not an error: a ``UserWarning``
    names the key and the key has no effect.
    """
    resolved = qconfigs_by_path(module, qconfig_dict)
    keys = qconfig_dict.module_name_qconfigs if is_qconfig_mapping(qconfig_dict) else qconfig_dict
    for key in keys:
        if key not in resolved:
            warnings.warn(
                f"qconfig_dict key {key!r} names no submodule of the model; it is ignored",
                UserWarning,
                stacklevel=2,
            )
    return resolved


def qconfigs_by_path(module: Any, qconfig_dict: Any) -> dict[str, QConfig | None]:
    """``resolve_qconfigs`` without the warning for keys that name no submodule."""
    check_qconfig_dict(qconfig_dict)
    root = as_cpp(module)
    if is_qconfig_mapping(qconfig_dict):
        return MappingResolver(root, qconfig_dict).module_qconfigs
    return {path: qconfig_for_path(qconfig_dict, path) for path, _ in named_modules(root)}


def qconfig_key_for_path(qconfig_dict: dict, path: str) -> str | None:
    """The ``qconfig_dict`` key that governs the module at dotted ``path``, or None if none does.

    The longest key that is ``path`` itself or a dotted prefix of it wins
    (``"sub"`` covers ``"sub"`` and ``"sub.x"``, not ``"subway"``; ``""``
    covers everything).
    """
    prefix = path
    while True:
        if prefix in qconfig_dict:
            return prefix
        if not prefix:
            return None
        prefix = prefix.rpartition(".")[0]


def qconfig_for_path(qconfig_dict: dict, path: str) -> QConfig | None:
    """The effective qconfig of the module at dotted ``path``: its governing entry's, else None.

    The rule of ``resolve_qconfigs``, for one path and without the module;
    None means not quantized, whether an entry says None or no entry covers
    the path.
    """
    key = qconfig_key_for_path(qconfig_dict, path)
    return None if key is None else qconfig_dict[key]


def qconfig_paths_needing_own_type(
    module: Any, resolved: dict[str, QConfig | None], op_qconfigs: dict[str, dict] | None = None
) -> list[str]:
    """Instances that must get a class type of their own before observers go in.

    Methods live on class types, so instances of one type must agree on the
    qconfig of every module below them (not only their own): otherwise the
    observers one of them needs would be inserted into the others' graphs.
    For each class type, the instances that agree with its first instance
    (in module order) keep the type; every other instance is listed.
    ``op_qconfigs`` (``MappingResolver.op_qconfigs``) adds the qconfigs of
    single ops of an instance's graphs to what must agree.
    """
    op_qconfigs = op_qconfigs or {}
    root = as_cpp(module)
    signatures: dict[str, tuple] = {}
    types: dict[str, str] = {}

    def visit(path: str, instance: CppModule) -> tuple:
        ops = tuple(sorted((position, id(q)) for position, q in op_qconfigs.get(path, {}).items()))
        parts: list[tuple] = [("", id(resolved.get(path)), ops)]
        for name, child in children_of(instance):
            child_path = f"{path}.{name}" if path else name
            parts.extend((f"{name}.{rel}" if rel else name, *q) for rel, *q in visit(child_path, child))
        signature = tuple(parts)
        signatures[path] = signature
        types[path] = instance._type().qualified_name()
        return signature

    visit("", root)
    first_signature: dict[str, tuple] = {}
    needing: list[str] = []
    for path in signatures:
        type_name = types[path]
        expected = first_signature.setdefault(type_name, signatures[path])
        if signatures[path] != expected:
            needing.append(path)
    return needing

"""``torch.ao.quantization.QConfigMapping`` resolved on TorchScript, with the precedence of PyTorch's FX mode.

A ``QConfigMapping`` may stand wherever a ``qconfig_dict`` does. Its
entries rank as in FX mode (``torch/ao/quantization/fx/qconfig_mapping_utils.py``),
lowest first: global, object_type, module_name_regex, module_name,
module_name_object_type_order. FX traces through the user's modules and
keeps ``torch.nn`` modules (except ``Sequential``) as single calls; on the
module tree that TorchScript keeps, the same rules read:

- a ``torch.nn`` module ("leaf", e.g. ``conv``, a ``Conv2d``) takes, first
  that applies: the ``module_name_object_type_order`` entry for its parent,
  its class and the number of earlier calls of that class in the parent
  (``("", nn.Conv2d, 1)``: the model's second conv call); the
  ``module_name`` entry of its path or of the nearest dotted prefix
  (``"layer1"`` covers ``"layer1.0.conv"``); the first registered
  ``module_name_regex`` that ``re.match``-es its path; the ``object_type``
  entry of its class; the global qconfig. Everything inside a leaf module
  follows it.
- the ops in the code of one of the user's modules (and of ``Sequential``)
  take the same ranking without the order entry; for an op that an
  ``object_type`` names (``F.linear``, ``torch.add``, ``"reshape"``), that
  entry replaces the global qconfig at the bottom, and the order entry for
  (module path, op, number of earlier such ops in that module) tops it. The
  class of the model itself is never looked up (FX's root scope has none),
  and ``set_module_name("", ...)`` is ignored, as in FX.
- each submodule resolves on its own: a parent's ``object_type`` or regex
  entry does not reach its children (``module_name`` does, by prefix).

TorchScript names ops, not Python callables: an op object type is a
``torch.nn.functional`` / ``torch`` / ``torch.Tensor`` function or an
``operator`` function with an aten op of its name (``F.linear`` is
``aten::linear``; ``F.relu`` also ``aten::relu_``; ``torch.add`` and
``operator.add`` are both ``aten::add``), or a method name (``"reshape"``).
Two object types naming one aten op with different qconfigs, a Python
function of the user's, or any other key TorchScript cannot tell raise
ValueError. ``qgraph.quant.mapping_resolver`` applies the ranking to a
module tree.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterator
from typing import Any, TypeGuard

import torch
import torch.nn.functional as F
from torch.ao.quantization import QConfig, QConfigMapping

__all__ = [
    "OpTable",
    "check_qconfig_mapping",
    "explain_op_qconfig",
    "is_module_class",
    "is_qconfig_mapping",
    "map_qconfigs",
    "mapping_entries",
    "module_type_name",
    "op_kinds",
    "parent_path",
    "ranked_qconfig",
    "reads_graphs",
]

_OPERATOR_OPS = {
    operator.add: "add",
    operator.iadd: "add_",
    operator.sub: "sub",
    operator.isub: "sub_",
    operator.mul: "mul",
    operator.imul: "mul_",
    operator.truediv: "div",
    operator.itruediv: "div_",
    operator.matmul: "matmul",
}
_UPSAMPLE = frozenset(
    f"aten::upsample_{mode}"
    for mode in ("nearest1d", "nearest2d", "nearest3d", "linear1d", "bilinear2d", "bicubic2d", "trilinear3d")
)
# Functionals whose TorchScript op has another name.
_RENAMED = {F.interpolate: _UPSAMPLE, F.upsample: _UPSAMPLE}


def is_qconfig_mapping(qconfig_dict: Any) -> bool:
    return isinstance(qconfig_dict, QConfigMapping)


def reads_graphs(mapping: QConfigMapping) -> bool:
    """Whether resolving ``mapping`` reads the ops of the graphs: it has op object types or order entries."""
    return bool(mapping.module_name_object_type_order_qconfigs) or not all(
        is_module_class(object_type) for object_type in mapping.object_type_qconfigs
    )


def _has_aten_op(name: str) -> bool:
    return bool(name) and bool(torch._C._jit_get_schemas_for_operator(f"aten::{name}"))


def is_module_class(object_type: Any) -> TypeGuard[type[torch.nn.Module]]:
    return isinstance(object_type, type) and issubclass(object_type, torch.nn.Module)


def module_type_name(module_class: Any) -> str:
    return f"{module_class.__module__}.{module_class.__qualname__}"


def op_kinds(object_type: Any) -> frozenset[str]:
    """The aten node kinds an op object type names in TorchScript; ValueError when it names none.

    ``F.linear`` -> ``{"aten::linear"}``; ``F.relu`` -> ``{"aten::relu", "aten::relu_"}``;
    ``operator.iadd`` -> ``{"aten::add_"}``; ``"reshape"`` -> ``{"aten::reshape"}``.
    """
    if isinstance(object_type, str):
        if _has_aten_op(object_type):
            return frozenset({f"aten::{object_type}"})
        raise ValueError(f"QConfigMapping object type {object_type!r} names no TorchScript op (aten::{object_type})")
    if callable(object_type):
        try:
            renamed = _RENAMED.get(object_type)
            op = _OPERATOR_OPS.get(object_type)
        except TypeError:  # unhashable callables name no op either
            renamed = op = None
        if renamed is not None:
            return renamed
        if op is not None:
            return frozenset({f"aten::{op}"})
        name = getattr(object_type, "__name__", "")
        if getattr(F, name, None) is object_type and _has_aten_op(name):
            # Functionals with an ``inplace`` flag run the in-place op when it is set.
            return frozenset(f"aten::{n}" for n in (name, f"{name}_") if _has_aten_op(n))
        if object_type in (getattr(torch, name, None), getattr(torch.Tensor, name, None)) and _has_aten_op(name):
            return frozenset({f"aten::{name}"})
    raise ValueError(
        f"QConfigMapping object type {object_type!r} is not supported in graph mode: TorchScript keeps modules "
        "and aten ops, so an object type is an nn.Module class, a torch / torch.nn.functional / torch.Tensor / "
        "operator function with an aten op of its name (F.linear, torch.add, operator.add), or a method name "
        "('reshape')"
    )


def _check_qconfig(qconfig: Any, where: str) -> None:
    if qconfig is not None and not isinstance(qconfig, QConfig):
        raise TypeError(f"QConfigMapping {where}: expected a torch.ao.quantization.QConfig or None, got {qconfig!r}")


def mapping_entries(mapping: QConfigMapping) -> Iterator[tuple[str, Any]]:
    """(description, qconfig) for every entry, in FX's order of increasing priority."""
    yield "global", mapping.global_qconfig
    for object_type, qconfig in mapping.object_type_qconfigs.items():
        yield f"object_type {_describe(object_type)}", qconfig
    for pattern, qconfig in mapping.module_name_regex_qconfigs.items():
        yield f"module_name_regex {pattern!r}", qconfig
    for name, qconfig in mapping.module_name_qconfigs.items():
        yield f"module_name {name!r}", qconfig
    for (name, object_type, index), qconfig in mapping.module_name_object_type_order_qconfigs.items():
        yield f"module_name_object_type_order ({name!r}, {_describe(object_type)}, {index})", qconfig


def _describe(object_type: Any) -> str:
    """``torch.nn.functional.linear``, ``operator.add``, ``torch.nn.modules.conv.Conv2d``, ``'reshape'``."""
    if isinstance(object_type, str):
        return repr(object_type)
    if is_module_class(object_type):
        return module_type_name(object_type)
    name = getattr(object_type, "__name__", "")
    for namespace, label in _NAMESPACES:
        if name and getattr(namespace, name, None) is object_type:
            return f"{label}.{name}"
    return repr(object_type)


_NAMESPACES = ((F, "torch.nn.functional"), (torch, "torch"), (torch.Tensor, "torch.Tensor"), (operator, "operator"))


def check_qconfig_mapping(mapping: QConfigMapping) -> None:
    """ValueError / TypeError for an entry graph mode cannot apply (see the module docstring)."""
    for where, qconfig in mapping_entries(mapping):
        _check_qconfig(qconfig, where)
    for object_type in mapping.object_type_qconfigs:
        if not is_module_class(object_type):
            op_kinds(object_type)
    for pattern in mapping.module_name_regex_qconfigs:
        if not isinstance(pattern, str):
            raise TypeError(f"QConfigMapping module_name_regex {pattern!r}: expected a str")
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(
                f"QConfigMapping module_name_regex {pattern!r} is not a regular expression: {err}"
            ) from None
    for name in mapping.module_name_qconfigs:
        if not isinstance(name, str):
            raise TypeError(f"QConfigMapping module_name {name!r}: expected a dotted module path (str)")
    for name, object_type, index in mapping.module_name_object_type_order_qconfigs:
        where = f"module_name_object_type_order ({name!r}, {_describe(object_type)}, {index!r})"
        if not isinstance(name, str):
            raise TypeError(f"QConfigMapping {where}: the module name must be a str")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ValueError(f"QConfigMapping {where}: the index must be an int >= 0")
        if not is_module_class(object_type):
            op_kinds(object_type)
    OpTable(mapping)


def map_qconfigs(mapping: QConfigMapping, convert: Callable[[Any], Any]) -> QConfigMapping:
    """A copy of ``mapping`` with ``convert`` applied to every QConfig (None stays None).

    Each distinct QConfig object is converted once, so entries that shared one
    still share its result.
    """
    done: dict[int, Any] = {}

    def one(qconfig: Any) -> Any:
        if qconfig is None:
            return None
        if id(qconfig) not in done:
            done[id(qconfig)] = convert(qconfig)
        return done[id(qconfig)]

    result = QConfigMapping().set_global(one(mapping.global_qconfig))
    for object_type, qconfig in mapping.object_type_qconfigs.items():
        result.set_object_type(object_type, one(qconfig))
    for pattern, qconfig in mapping.module_name_regex_qconfigs.items():
        result.set_module_name_regex(pattern, one(qconfig))
    for name, qconfig in mapping.module_name_qconfigs.items():
        result.set_module_name(name, one(qconfig))
    for (name, object_type, index), qconfig in mapping.module_name_object_type_order_qconfigs.items():
        result.set_module_name_object_type_order(name, object_type, index, one(qconfig))
    return result


class OpTable:
    """Which op object type each aten kind belongs to, across object_type and order entries."""

    def __init__(self, mapping: QConfigMapping):
        self.key_of_kind: dict[str, Any] = {}
        self.qconfig_of_key: dict[int, Any] = {}
        keys = [t for t in mapping.object_type_qconfigs if not is_module_class(t)]
        keys += [t for _, t, _ in mapping.module_name_object_type_order_qconfigs if not is_module_class(t)]
        for key in keys:
            for kind in op_kinds(key):
                other = self.key_of_kind.setdefault(kind, key)
                if other is not key and other != key and not self._same_qconfig(mapping, key, other):
                    raise ValueError(
                        f"QConfigMapping object types {_describe(other)} and {_describe(key)} both name {kind} in "
                        "TorchScript (which does not tell them apart) but have different qconfigs"
                    )

    def canonical(self, object_type: Any) -> Any:
        """The object type that stands for every op object type naming the same aten ops."""
        return self.key_of_kind[next(iter(op_kinds(object_type)))]

    @staticmethod
    def _same_qconfig(mapping: QConfigMapping, a: Any, b: Any) -> bool:
        entries = mapping.object_type_qconfigs
        return a in entries and b in entries and entries[a] is entries[b]


def ranked_qconfig(
    mapping: QConfigMapping, path: str, class_name: str | None, fallback: tuple[Any, str]
) -> tuple[Any, str]:
    """(qconfig, entry) by FX's ranking for the code of module ``path`` of class ``class_name``.

    ``class_name`` is qualified (``torch.nn.modules.linear.Linear``), or
    unqualified (``Linear``) where only that is known; None for the model.
    """
    prefix = path
    while prefix:
        if prefix in mapping.module_name_qconfigs:
            return mapping.module_name_qconfigs[prefix], f"module_name {prefix!r}"
        prefix = parent_path(prefix)
    for pattern, qconfig in mapping.module_name_regex_qconfigs.items():
        if re.match(pattern, path):
            return qconfig, f"module_name_regex {pattern!r}"
    if class_name is not None:
        for object_type, qconfig in mapping.object_type_qconfigs.items():
            if is_module_class(object_type) and class_name in (module_type_name(object_type), object_type.__qualname__):
                return qconfig, f"object_type {_describe(object_type)}"
    return fallback


def explain_op_qconfig(mapping: QConfigMapping, path: str, class_name: str | None, kind: str) -> tuple[Any, str]:
    """(qconfig, the entry that gave it) for an op of ``kind`` in the code of module ``path``.

    Order entries need the module tree and are not consulted: this is for a
    converted model, which keeps module paths but no module objects.
    """
    table = OpTable(mapping)
    key = table.key_of_kind.get(kind)
    if key is not None and key in mapping.object_type_qconfigs:
        fallback = (mapping.object_type_qconfigs[key], f"object_type {_describe(key)}")
    else:
        fallback = (mapping.global_qconfig, "global")
    return ranked_qconfig(mapping, path, class_name, fallback)


def parent_path(path: str) -> str:
    return path.rpartition(".")[0]

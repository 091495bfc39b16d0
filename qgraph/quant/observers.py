"""Observers in a prepared graph: their names, kinds and dtypes.

Observer insertion adds submodules named ``_observer_<N>`` and calls their
``forward`` on each observed value::

    %_observer_3 : MinMaxObserver = prim::GetAttr[name="_observer_3"](%self)
    %x.1 = prim::CallMethod[name="forward"](%_observer_3, %x)

Observers are QConfig parts: a scripted module (``qgraph.quant.qconfig``)
or, for passes that take eager QConfigs, an observer class or
``with_args`` partial. What calibration left in them is
``qgraph.quant.observer_state``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from qgraph.ir import CppModule, Value, as_cpp, as_python
from qgraph.quant.scalar_types import dtype_of, qscheme_of

__all__ = [
    "OBSERVER_PREFIX",
    "is_observer_path",
    "observer_name",
    "observer_dtype",
    "is_placeholder",
    "is_embedding_bag_placeholder",
    "ScriptedWeightObserver",
    "fresh_observer",
]

OBSERVER_PREFIX = "_observer_"


def is_observer_path(path: str) -> bool:
    """Whether the submodule at dotted ``path`` is an observer that observer insertion added."""
    return path.rpartition(".")[2].startswith(OBSERVER_PREFIX)


def observer_name(value: Value) -> str | None:
    """The ``_observer_N`` attribute whose ``forward`` produced ``value``, if any."""
    node = value.node()
    if node.kind() != "prim::CallMethod" or node.s("name") != "forward":
        return None
    receiver = node.inputsAt(0).node()
    if receiver.kind() == "prim::GetAttr" and OBSERVER_PREFIX in receiver.s("name"):
        return receiver.s("name")
    return None


def _is_scripted(observer: Any) -> bool:
    return isinstance(observer, (CppModule, torch.jit.ScriptModule))


def observer_dtype(observer: Any) -> torch.dtype | None:
    """The dtype an observer quantizes to: read from a scripted observer, or from a fresh instance of a class."""
    if not _is_scripted(observer):
        return observer().dtype
    module = as_cpp(observer)
    return dtype_of(module.getattr("dtype")) if module.hasattr("dtype") else None


def is_placeholder(observer_type: Any) -> bool:
    """Whether a scripted observer's class type is a ``PlaceholderObserver``'s."""
    return observer_type.kind() == "ClassType" and "PlaceholderObserver" in observer_type.qualified_name()


def is_embedding_bag_placeholder(observer: CppModule) -> bool:
    """A ``PlaceholderObserver`` whose ``custom_op_name`` names an embedding_bag kernel."""
    return (
        is_placeholder(observer._type())
        and observer.hasattr("custom_op")
        and "embedding_bag_" in observer.getattr("custom_op")
    )


class ScriptedWeightObserver:
    """A fresh copy of a scripted observer, read back with torch dtypes and qschemes.

    Eager weight quantization (``_quantize_weight``) compares an observer's
    ``dtype`` and ``qscheme`` with ``torch.qint8``,
    ``torch.per_tensor_symmetric``, ...; a scripted observer holds their
    numbers.
    """

    def __init__(self, template: Any):
        # A scripted observer in a QConfig is a template instance: copy it,
        # so each weight starts from the template's state.
        self.module = copy.deepcopy(as_python(as_cpp(template)))
        self.dtype = dtype_of(self.module.dtype)
        self.qscheme = qscheme_of(self.module.qscheme)
        self.ch_axis = getattr(self.module, "ch_axis", None)
        self.quant_min = self.module.quant_min
        self.quant_max = self.module.quant_max

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def calculate_qparams(self) -> Any:
        return self.module.calculate_qparams()


def fresh_observer(observer: Any) -> Any:
    """A new observer instance from a QConfig part, as eager quantization makes one per weight."""
    return ScriptedWeightObserver(observer) if _is_scripted(observer) else observer()

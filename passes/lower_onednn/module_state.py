"""Saving and loading a lowered module: packed weights stay out of the archive and are packed again.

oneDNN's packed weights are opaque tensors that ``torch.jit.save`` cannot
write ("Cannot access storage of OpaqueTensorImpl"). The lowered module
keeps them in ``Optional[Tensor]`` attributes that are None until the first
call packs them (``emit.Emitter.packed_weight``); the int8 weights they are
packed from are constants of the graph, saved with it. This module gives
the lowered module a ``__getstate__`` that leaves the packed attributes out
and a ``__setstate__`` that sets them to None again, so the saved model
loads in a process that imported nothing but torch, and packs on its first
call there::

    def __getstate__(self) -> Tuple[bool, int]:
        return (True, self.kept_attribute)

    def __setstate__(self, state: Tuple[bool, int]) -> None:
        self.kept_attribute = state[1]
        self._onednn_packed_0 = None
        ...

It also marks the module as made by the ``"onednn"`` lowering
(``qgraph.quant.lowering``), which the float-op report reads.
"""

from __future__ import annotations

import typing
from typing import Any, cast

import torch

from passes.lower_onednn.context import PACKED_PREFIX
from qgraph.ir import CppModule
from qgraph.quant.lowering import mark_lowering

__all__ = ["finish_module"]

_BINDINGS: Any = torch._C


def _attribute_types(module: CppModule) -> list[tuple[str, str]]:
    names = [name for name, _ in _BINDINGS._jit_debug_module_iterators(module)["named_attributes"]]
    return [(name, type_.annotation_str) for name, type_ in zip(names, cast(Any, module._type()).containedTypes())]


def _state_methods(kept: list[tuple[str, str]], packed: list[str]) -> str:
    state_type = "Tuple[" + ", ".join(["bool", *(type_ for _, type_ in kept)]) + "]"
    values = ", ".join(["True", *(f"self.{name}" for name, _ in kept)])
    restore = [f"    self.{name} = state[{i + 1}]" for i, (name, _) in enumerate(kept)]
    restore += [f"    self.{name} = None" for name in packed]
    return (
        f"def __getstate__(self) -> {state_type}:\n    return ({values},)\n\n"
        f"def __setstate__(self, state: {state_type}) -> None:\n" + "\n".join(restore or ["    pass"]) + "\n"
    )


def finish_module(module: CppModule) -> None:
    """Mark ``module`` as lowered and give it state methods that leave packed weights out; in place."""
    mark_lowering(module, "onednn")
    attributes = _attribute_types(module)
    kept = [(name, type_) for name, type_ in attributes if not name.startswith(PACKED_PREFIX)]
    packed = [name for name, _ in attributes if name.startswith(PACKED_PREFIX)]
    source = _state_methods(kept, packed)
    # Attribute types print as typing names (Tuple, Optional, List, Dict).
    cast(Any, module)._define(
        torch._C.ConcreteModuleType.from_jit_type(module._type()),
        source,
        lambda name: torch if name == "torch" else getattr(typing, name, None),
    )

"""Packed weights kept as module attributes, ``_packed_params_<k>``.

Quantized kernels take their weight (and bias) as one packed-params object,
a TorchScript custom-class object that saves and loads with the module.
Computed once at convert time (by ``freeze`` from the weight attributes, or
by ``fold_prepacking`` from frozen constants), it is stored on the module
and read where the ``quantized::*_prepack`` op was::

    %packed = quantized::conv2d_prepack(%w, %b, %stride, %padding, %dilation, %groups)

becomes::

    %packed = prim::GetAttr[name="_packed_params_0"](%self)
"""

from __future__ import annotations

from typing import Any

from qgraph.ir import CppModule, Graph, Node, Value, insert_getattr, register_attribute, unique_attr_name

__all__ = ["PACKED_PARAMS_PREFIX", "read_packed_from_attribute"]

PACKED_PARAMS_PREFIX = "_packed_params_"


def read_packed_from_attribute(
    module: CppModule, graph: Graph, self_value: Value, prepack: Node, packed: Any, next_index: int
) -> tuple[Node, int]:
    """Store ``packed`` as ``_packed_params_<k>`` of ``module`` and make the users of ``prepack`` read it.

    ``k`` is the first free index from ``next_index`` on; returns the new
    ``prim::GetAttr`` and the index to start from next time, which keeps
    naming linear in the number of ops. ``prepack`` is left without users.
    """
    name = unique_attr_name(module, PACKED_PARAMS_PREFIX, next_index)
    packed_type = prepack.output().type()
    register_attribute(module, name, packed, packed_type)
    read = insert_getattr(graph, self_value, name, packed_type, before=prepack, source=prepack)
    prepack.output().replaceAllUsesWith(read.output())
    return read, int(name.removeprefix(PACKED_PARAMS_PREFIX)) + 1

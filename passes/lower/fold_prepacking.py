"""Run weight prepacking once, at convert time, and keep the packed params as attributes.

In a frozen module the weights are constants, so a ``quantized::*_prepack``
whose inputs are all constants computes the same packed params on every
call. This pass runs it once, stores the result on the module as an
attribute ``_packed_params_<k>`` and reads that attribute instead::

    %w : QInt8(4, 3, 3, 3) = prim::Constant[value=<Tensor>]()
    %b : Float(4) = prim::Constant[value=<Tensor>]()
    %packed = quantized::conv2d_prepack(%w, %b, %stride, %padding, %dilation, %groups)
    %y = quantized::conv2d(%x_q, %packed, %scale, %zero_point)

becomes::

    %packed = prim::GetAttr[name="_packed_params_0"](%self)
    %y = quantized::conv2d(%x_q, %packed, %scale, %zero_point)

Packed params are TorchScript custom-class objects, so they save and load
with the module. A prepack whose inputs are not all constants (a weight
computed at run time) is left where it is. Every method of the given module
is rewritten, nested blocks included; attributes go on the module itself,
which is why this runs on the top-level frozen module, where every method
has been inlined.
"""

from __future__ import annotations

from typing import Any

import torch

from qgraph.ir import erase_nodes, inputs_of, ivalue, like, method_graph, walk
from qgraph.ir.module import as_cpp
from qgraph.quant.ops import PREPACK_OPS
from qgraph.quant.packed_params import read_packed_from_attribute

__all__ = ["fold_prepacking"]

_PREPACK_KINDS = frozenset(PREPACK_OPS)


def _run(node: torch._C.Node) -> Any:
    namespace, name = node.kind().split("::", 1)
    op = getattr(getattr(torch.ops, namespace), name)
    return op(*(ivalue(value) for value in inputs_of(node)))


def _all_inputs_constant(node: torch._C.Node) -> bool:
    return all(value.node().kind() == "prim::Constant" for value in inputs_of(node))


def fold_prepacking(module: Any) -> Any:
    """Replace constant-input prepack ops in ``module``'s methods by attributes holding their result.

    Works in place and returns ``module`` (a ScriptModule or its ``._c``).
    """
    module_c = as_cpp(module)
    for method in module_c._method_names():
        graph = method_graph(module_c, method)
        inputs = list(graph.inputs())
        self_value = inputs[0] if inputs else None
        folded = []
        next_index = 0
        # Program order, so attribute numbers follow the order of the ops.
        for node in [n for n in walk(graph) if n.kind() in _PREPACK_KINDS]:
            if self_value is None or not _all_inputs_constant(node):
                continue
            _, next_index = read_packed_from_attribute(module_c, graph, self_value, node, _run(node), next_index)
            folded.append(node)
        erase_nodes(folded)
    return like(module_c, module)

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

from qgraph.ir.graph import erase_nodes, inputs_of, insert_op, walk
from qgraph.ir.module import as_cpp, like, method_graph, register_attribute, unique_attr_name

__all__ = ["PREPACK_OPS", "ATTRIBUTE_PREFIX", "fold_prepacking", "read_from_attribute"]

# Prepacking ops with no side effects, whose result depends only on their inputs.
PREPACK_OPS = (
    "quantized::linear_prepack",
    "quantized::linear_prepack_fp16",
    "quantized::conv1d_prepack",
    "quantized::conv2d_prepack",
    "quantized::conv3d_prepack",
    "quantized::conv_transpose1d_prepack",
    "quantized::conv_transpose2d_prepack",
    "quantized::conv_transpose3d_prepack",
)

ATTRIBUTE_PREFIX = "_packed_params_"
_PREPACK_KINDS = frozenset(PREPACK_OPS)


def _run(node: torch._C.Node) -> Any:
    namespace, name = node.kind().split("::", 1)
    op = getattr(getattr(torch.ops, namespace), name)
    return op(*(value.toIValue() for value in inputs_of(node)))


def _all_inputs_constant(node: torch._C.Node) -> bool:
    return all(value.node().kind() == "prim::Constant" for value in inputs_of(node))


def read_from_attribute(
    module_c: torch._C.ScriptModule,
    graph: torch._C.Graph,
    self_value: torch._C.Value,
    prepack: torch._C.Node,
    packed: Any,
    next_index: int,
) -> tuple[torch._C.Node, int]:
    """Store ``packed`` as ``_packed_params_<k>`` and make the users of ``prepack`` read it.

    ``k`` is the first free index from ``next_index`` on; returns the new
    ``prim::GetAttr`` and the index to start from next time, which keeps
    naming linear in the number of ops. ``prepack`` is left without users.
    """
    name = unique_attr_name(module_c, ATTRIBUTE_PREFIX, next_index)
    packed_type = prepack.output().type()
    register_attribute(module_c, name, packed, packed_type)
    read = insert_op(graph, "prim::GetAttr", [self_value], before=prepack, output_types=[packed_type], source=prepack)
    read.s_("name", name)
    prepack.output().replaceAllUsesWith(read.output())
    return read, int(name.removeprefix(ATTRIBUTE_PREFIX)) + 1


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
            _, next_index = read_from_attribute(module_c, graph, self_value, node, _run(node), next_index)
            folded.append(node)
        erase_nodes(folded)
    return like(module_c, module)

"""Make a converted model's quantized graphs run where PyTorch's kernels or IR conventions fail.

Takes a converted model: the frozen, quantized module of convert (and,
where a rule applies there too, its ``debug=True`` model). Leaves the same
model, its graphs rewritten where they would otherwise fail to load, raise,
or compute something else than the model (outputs a kernel never writes, a
relu a kernel leaves out). Every rule leaves the bits of a model the
reference runs right unchanged. The rules, in the order they apply:

1. a tuple of quantized values dequantized as a whole is dequantized per
   element (``tuples.py``);
2. ``add_scalar_relu`` given a tensor scalar gets a number (``kernels.py``);
3. ``view`` of a quantized value becomes ``reshape`` (``layout.py``);
4. ``mean`` of a quantized value keeps its dims, then squeezes them
   (``layout.py``);
5. quantized ``group_norm`` / ``instance_norm`` get a run-time guard for the
   inputs their kernel skips samples of (``kernels.py``).

Ops earlier passes left in float on purpose carry a ``tag_float_op`` mark;
the pass turns the marks into the model's float-op records
(``qgraph.quant.float_ops``), which the float-op report reads.
"""

from __future__ import annotations

from typing import Any

import torch

from passes.legalize.kernels import NORM_GUARDS, TENSOR_SCALAR_REWRITES
from passes.legalize.layout import mean_rewrites, view_rewrites
from passes.legalize.tuples import TUPLE_REWRITES
from qgraph.ir import Graph, NodeIndex
from qgraph.pattern import rewrite
from qgraph.quant.float_ops import rewrite_recording_float_ops
from qgraph.quant.quantized_values import quantized_values

__all__ = ["legalize_quantized"]


def _legalize_graph(graph: Graph) -> int:
    index = NodeIndex(graph)
    made = rewrite(graph, TUPLE_REWRITES, index)
    made += rewrite(graph, TENSOR_SCALAR_REWRITES, index)
    # The mean rule must see a mean's input as quantized after the view rule
    # replaced a view feeding it, so the analysis is redone once the reshapes exist.
    made += rewrite(graph, view_rewrites(quantized_values(graph)), index)
    made += rewrite(graph, mean_rewrites(quantized_values(graph)), index)
    made += rewrite(graph, NORM_GUARDS, index)
    if made:
        torch._C._jit_pass_dce(graph)
    return made


def legalize_quantized(module: Any) -> int:
    """Rewrite a converted model's method graphs so they run, save and load; in place.

    ``module`` is a converted ScriptModule (or its ``._c``): the frozen model
    of ``convert_jit`` / ``quantize_jit``, or their ``debug=True`` model.
    Every method of ``module`` itself is rewritten (after convert,
    ``forward`` holds the whole inlined model). Returns the number of
    rewrites made. Ops earlier passes tagged with ``tag_float_op`` are
    recorded in the module's ``_qgraph_float_ops`` attribute (records of an
    earlier run are kept, renumbered); read them with
    ``qgraph.quant.float_ops.float_op_records``.

    Before (a model returning two quantized conv outputs)::

        %t : (Tensor, Tensor) = prim::TupleConstruct(%a_q, %b_q)
        %out : (Tensor, Tensor) = aten::dequantize(%t)
        return (%out)

    After::

        %a : Tensor = aten::dequantize(%a_q)
        %b : Tensor = aten::dequantize(%b_q)
        %out : (Tensor, Tensor) = prim::TupleConstruct(%a, %b)
        return (%out)
    """
    return rewrite_recording_float_ops(module, _legalize_graph)

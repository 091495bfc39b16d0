"""Lower a quantize/dequantize model to PyTorch's quantized ops (convert, second half).

Takes the output of ``insert_quant_dequant`` (the ``debug=True`` model of
convert: float ops between ``aten::quantize_per_tensor`` /
``aten::dequantize`` pairs, qparams in module attributes) and returns a
frozen module running quantized kernels::

    %x_q = aten::quantize_per_tensor(%x, %x_scale_0, %x_zero_point_0, %x_scalar_type_0)
    %x_dq = aten::dequantize(%x_q)
    %w_q = aten::quantize_per_channel(%weight, %w_scale_0, %w_zero_point_0, %w_axis_0, %w_scalar_type_0)
    %w_dq = aten::dequantize(%w_q)
    %y = aten::conv2d(%x_dq, %w_dq, %bias, ...)
    %y_q = aten::quantize_per_tensor(%y, %y_scale_0, %y_zero_point_0, %y_scalar_type_0)
    %out = aten::dequantize(%y_q)

becomes::

    %x_q = aten::quantize_per_tensor(%x, 0.0316, 59, 13)
    %packed = prim::GetAttr[name="_packed_params_0"](%self)
    %y_q = quantized::conv2d(%x_q, %packed, 0.0081, 64)
    %out = aten::dequantize(%y_q)

The stages, in order (``finalize_pipeline`` lists them for the pipeline
runner, so each can be dumped and inspected):

1. ``swap-functional-linear``: calls of functions named ``linear`` become
   ``aten::linear`` in every method graph (before inlining hides the call);
2. ``inline``: ``forward`` is inlined, so every pattern is in one graph;
3. ``replicate-quantize``, ``replicate-dequantize``: a quantize of an ``if``
   result moves into the branches; every use of a dequantized value gets
   its own ``aten::dequantize``, so each float op owns its island;
4. ``insert-prepack-unpack``: conv/linear weights go through
   ``quantized::*_prepack`` / ``*_unpack``;
5. ``quant-fusion``: the pattern table of ``passes.quant_fusion`` (static or
   dynamic) replaces islands with quantized ops;
6. ``freeze``: ``passes.freeze``: weights are prepacked from their
   attributes where nothing can change them, then attributes become
   constants (``preserved_attrs`` stay);
7. ``fold-prepacking``: prepacking runs once; packed params become attributes;
8. ``cleanup``: constant propagation and dead-code elimination.

``forward`` of the given module is rewritten in place up to the freeze (as
convert does on its own copy of the user's model); the frozen module is a
new module, returned as the same kind of object that was given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.ao.quantization.quant_type import QuantType

from passes.fold_prepacking import fold_prepacking
from passes.freeze import freeze
from passes.insert_prepack_unpack import insert_prepack_unpack
from passes.quant_fusion import quant_fusion
from passes.replicate_dequantize import replicate_dequantize
from passes.replicate_quantize import replicate_quantize
from passes.swap_functional_linear import swap_functional_linear
from qgraph.ir import CppModule, as_cpp, like, method_graph
from qgraph.pipeline import Pipeline, Stage

__all__ = ["finalize", "finalize_pipeline"]


def _forward_stage(name: str, graph_pass) -> Stage:
    def run(module: CppModule) -> None:
        graph_pass(method_graph(module, "forward"))

    return Stage(name, run)


def _swap_functional_linear(module: CppModule) -> None:
    swap_functional_linear(module)  # every method of the tree; the count is not a stage result


def _cleanup(module: CppModule) -> None:
    for method in module._method_names():
        graph = method_graph(module, method)
        torch._C._jit_pass_constant_propagation(graph)
        torch._C._jit_pass_dce(graph)


def finalize_pipeline(quant_type: QuantType = QuantType.STATIC, preserved_attrs: Sequence[str] = ()) -> Pipeline:
    """The finalize stages for ``quant_type``, as a ``qgraph.pipeline.Pipeline``."""
    quant_type = _check_quant_type(quant_type)
    preserved = _check_preserved_attrs(preserved_attrs)
    return Pipeline(
        "finalize",
        [
            Stage("swap-functional-linear", _swap_functional_linear),
            _forward_stage("inline", torch._C._jit_pass_inline),
            _forward_stage("replicate-quantize", replicate_quantize),
            _forward_stage("replicate-dequantize", replicate_dequantize),
            _forward_stage("insert-prepack-unpack", insert_prepack_unpack),
            _forward_stage("quant-fusion", lambda graph: quant_fusion(graph, quant_type)),
            Stage("freeze", lambda module: freeze(module, preserved)),
            Stage("fold-prepacking", fold_prepacking),
            Stage("cleanup", _cleanup),
        ],
    )


def finalize(
    module: Any, quant_type: QuantType = QuantType.STATIC, preserved_attrs: Sequence[str] | None = None
) -> Any:
    """Fuse quantize/dequantize islands of ``module`` into quantized ops and freeze it.

    ``module`` is a ScriptModule (or its ``._c``) after quant-dequant
    insertion; ``quant_type`` is ``QuantType.STATIC`` or ``QuantType.DYNAMIC``;
    ``preserved_attrs`` names attributes (and methods) freezing keeps. Returns
    the frozen quantized module, of the same kind as ``module``.
    """
    module_c = as_cpp(module)
    if not module_c._has_method("forward"):
        raise ValueError(f"finalize needs a module with a forward method; {module_c._type().qualified_name()} has none")
    pipeline = finalize_pipeline(quant_type, () if preserved_attrs is None else preserved_attrs)
    return like(pipeline.run(module_c), module)


def _check_quant_type(quant_type: Any) -> QuantType:
    if not isinstance(quant_type, QuantType):
        raise TypeError(f"quant_type must be a torch.ao.quantization.QuantType, got {quant_type!r}")
    if quant_type not in (QuantType.STATIC, QuantType.DYNAMIC):
        raise ValueError(f"finalize supports QuantType.STATIC and QuantType.DYNAMIC, got {quant_type}")
    return quant_type


def _check_preserved_attrs(preserved_attrs: Sequence[str]) -> list[str]:
    if isinstance(preserved_attrs, str) or not all(isinstance(name, str) for name in preserved_attrs):
        raise TypeError(f"preserved_attrs must be a list of attribute names, got {preserved_attrs!r}")
    return list(preserved_attrs)

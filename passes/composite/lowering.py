"""The lowerings of a quantize / dequantize model as stages: PyTorch's ``finalize``, oneDNN's, and what follows.

``finalize_stages`` lowers to PyTorch's quantized kernels and freezes
(``finalize`` runs them alone), ``onednn_lowering_stages`` to oneDNN's int8
ops on plain integer tensors; ``legalize_stage`` and
``onednn_module_state_stage`` are the steps convert runs after them, and
``cleanup_stage`` the constant propagation and dead-code elimination that
ends a lowering.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from passes.legalize import legalize_quantized
from passes.lower import fold_prepacking, freeze, insert_prepack_unpack, keep_unsafe_convs_in_float, quant_fusion
from passes.lower_onednn import finish_module, onednn_stages
from qgraph.ir import CppModule, as_cpp, like, method_graph
from qgraph.pipeline import Pipeline, Stage, method_stage
from qgraph.quant.quant_type import QuantType, check_quant_type

__all__ = [
    "cleanup_stage",
    "finalize_stages",
    "finalize",
    "onednn_lowering_stages",
    "onednn_module_state_stage",
    "legalize_stage",
]


def cleanup_stage(method_names: Sequence[str] | None = None) -> Stage:
    """Constant propagation and dead-code elimination on the named methods (every method when None)."""

    def run(module: CppModule) -> None:
        for method in module._method_names() if method_names is None else method_names:
            graph = method_graph(module, method)
            torch._C._jit_pass_constant_propagation(graph)
            torch._C._jit_pass_dce(graph)

    return Stage("cleanup", run)


def finalize_stages(quant_type: QuantType = QuantType.STATIC, preserved_attrs: Sequence[str] = ()) -> list[Stage]:
    """The lowering of a quantize / dequantize model to PyTorch's quantized kernels, frozen.

    ``forward`` must be inlined already (``quant_dequant_stages`` leaves it so).
    """
    quant_type = check_quant_type(quant_type)
    preserved = _check_preserved_attrs(preserved_attrs)

    def keep_unsafe_convs(module: CppModule) -> None:
        keep_unsafe_convs_in_float(module)

    unsafe = [Stage("keep-unsafe-convs-in-float", keep_unsafe_convs)] if quant_type == QuantType.STATIC else []
    return [
        method_stage("insert-prepack-unpack", insert_prepack_unpack),
        *unsafe,
        method_stage("quant-fusion", lambda graph: quant_fusion(graph, quant_type)),
        Stage("freeze", lambda module: freeze(module, preserved)),
        Stage("fold-prepacking", lambda module: as_cpp(fold_prepacking(module))),
        cleanup_stage(),
    ]


def finalize(
    module: Any, quant_type: QuantType = QuantType.STATIC, preserved_attrs: Sequence[str] | None = None
) -> Any:
    """Fuse quantize/dequantize islands of ``module`` into quantized ops and freeze it.

    ``module`` is a ScriptModule (or its ``._c``) after quant-dequant
    insertion (its ``forward`` inlined, as ``insert_quant_dequant`` leaves
    it); ``quant_type`` is ``QuantType.STATIC`` or ``QuantType.DYNAMIC``;
    ``preserved_attrs`` names attributes (and methods) freezing keeps.
    ``forward`` of the given module is rewritten in place up to the freeze;
    returns the frozen quantized module, of the same kind as ``module``::

        %x_q = aten::quantize_per_tensor(%x, %x_scale_0, %x_zero_point_0, %x_scalar_type_0)
        %x_dq = aten::dequantize(%x_q)
        %w_q = aten::quantize_per_channel(%weight, %w_scale_0, %w_zero_point_0, %w_axis_0, %w_scalar_type_0)
        %w_dq = aten::dequantize(%w_q)
        %y = aten::conv2d(%x_dq, %w_dq, %bias, ...)
        %y_q = aten::quantize_per_tensor(%y, %y_scale_0, %y_zero_point_0, %y_scalar_type_0)

    becomes::

        %x_q = aten::quantize_per_tensor(%x, 0.0316, 59, 13)
        %packed = prim::GetAttr[name="_packed_params_0"](%self)
        %y_q = quantized::conv2d(%x_q, %packed, 0.0081, 64)
    """
    module_c = as_cpp(module)
    if not module_c._has_method("forward"):
        raise ValueError(f"finalize needs a module with a forward method; {module_c._type().qualified_name()} has none")
    stages = finalize_stages(quant_type, () if preserved_attrs is None else preserved_attrs)
    return like(Pipeline("finalize", stages).run(module_c), module)


def onednn_lowering_stages(preserved_attrs: Sequence[str] = ()) -> list[Stage]:
    """The lowering of a quantize / dequantize model to oneDNN's int8 ops on plain integer tensors, frozen.

    ``forward`` must be inlined already (``quant_dequant_stages`` leaves it so).
    """
    return onednn_stages(_check_preserved_attrs(preserved_attrs))


def onednn_module_state_stage() -> Stage:
    """The oneDNN-lowered module marked as such and given state methods that leave packed weights out."""
    return Stage("onednn-module-state", finish_module)


def legalize_stage() -> Stage:
    """Converted graphs made to run where PyTorch's kernels or loader fail; float-op tags into records."""

    def run(module: CppModule) -> None:
        legalize_quantized(module)

    return Stage("legalize-quantized", run)


def _check_preserved_attrs(preserved_attrs: Sequence[str]) -> list[str]:
    if isinstance(preserved_attrs, str) or not all(isinstance(name, str) for name in preserved_attrs):
        raise TypeError(f"preserved_attrs must be a list of attribute names, got {preserved_attrs!r}")
    return list(preserved_attrs)

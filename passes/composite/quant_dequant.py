"""PyTorch's ``insert_quant_dequant`` as stages: observers into quantize / dequantize, quantization carried through.

``quant_dequant_stages`` replaces calibrated observers by quantize /
dequantize pairs, inlines the method, propagates constants and carries
quantization through the ops that need no observer; convert's pipeline
splices them, and ``insert_quant_dequant`` runs them alone on a clone.
"""

from __future__ import annotations

from typing import Any

import torch

from passes.quant_dequant import (
    insert_quant_dequant_in_place,
    propagate_quantization,
    remove_redundant_dequantize,
    remove_redundant_quantization,
    replicate_choose_qparams_quant_dequant,
    replicate_clamp_scalar_args,
)
from passes.replicate_dequantize import replicate_dequantize
from passes.replicate_quantize import replicate_quantize
from qgraph.ir import as_cpp, clone_module, like
from qgraph.pipeline import Pipeline, Stage, method_stage
from qgraph.quant.quant_type import QuantType

__all__ = ["quant_dequant_stages", "insert_quant_dequant"]


def quant_dequant_stages(
    method_name: str = "forward", debug: bool = False, quant_type: Any = QuantType.STATIC
) -> list[Stage]:
    """Observers into quantize / dequantize pairs, then quantization carried through the inlined method.

    ``debug`` only decides a warning (the graph is the debug model either way).
    """
    return [
        Stage("insert-quant-dequant", lambda module: insert_quant_dequant_in_place(module, method_name, quant_type)),
        method_stage("inline", torch._C._jit_pass_inline, method_name),
        method_stage("constant-propagation", torch._C._jit_pass_constant_propagation, method_name),
        method_stage("replicate-choose-qparams", replicate_choose_qparams_quant_dequant, method_name),
        method_stage("remove-redundant-quantization", remove_redundant_quantization, method_name),
        method_stage("replicate-quantize", replicate_quantize, method_name),
        method_stage("replicate-dequantize", replicate_dequantize, method_name),
        method_stage("replicate-clamp-scalar-args", replicate_clamp_scalar_args, method_name),
        method_stage("propagate-quantization", lambda graph: propagate_quantization(graph, debug=debug), method_name),
        method_stage("remove-redundant-dequantize", remove_redundant_dequantize, method_name),
    ]


def insert_quant_dequant(
    module: Any,
    method_name: str = "forward",
    inplace: bool = False,
    debug: bool = False,
    quant_type: Any = QuantType.STATIC,
) -> Any:
    """Replace calibrated observers by quantize/dequantize ops and carry quantization through the method.

    ``module`` is a ScriptModule (or its ``._c``) after observer insertion and
    calibration; the result is the same kind of object, with
    ``module.<method_name>`` inlined: the ``debug=True`` model of convert. As
    PyTorch's pass of the same name does, the rewrite goes to a clone with
    fresh class types, so ``module`` itself is left as it was: with
    ``inplace=False`` the clone has copies of the tensors, with
    ``inplace=True`` it shares ``module``'s. ``debug`` only matters for
    warnings.
    """
    cpp = as_cpp(module)
    if not cpp._has_method(method_name):
        raise ValueError(f"module has no method {method_name!r} to convert")
    pipeline = Pipeline("insert-quant-dequant", quant_dequant_stages(method_name, debug, quant_type))
    return like(pipeline.run(clone_module(cpp, share_values=inplace)), module)

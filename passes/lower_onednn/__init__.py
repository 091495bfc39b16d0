"""Lower a quantize/dequantize model to PyTorch's oneDNN int8 ops on plain integer tensors.

A second lowering beside ``finalize``, chosen at convert time
(``convert_jit(model, lowering="onednn")``). It takes the output of
``insert_quant_dequant`` (the ``debug=True`` model: float ops between
``aten::quantize_per_tensor`` / ``aten::dequantize`` pairs, qparams in
module attributes)::

    %x_q = aten::quantize_per_tensor(%x, %x_scale_0, %x_zero_point_0, %x_scalar_type_0)
    %x_dq = aten::dequantize(%x_q)
    %w_q = aten::quantize_per_channel(%weight, %w_scale_0, %w_zero_point_0, %w_axis_0, %w_scalar_type_0)
    %y = aten::conv2d(%x_dq, aten::dequantize(%w_q), %bias, ...)
    %y_q = aten::quantize_per_tensor(aten::relu(%y), %y_scale_0, %y_zero_point_0, %y_scalar_type_0)
    %out = aten::dequantize(%y_q)

and returns a frozen module whose graph holds no quantized dtype: uint8
activations (channels-last between convs), ``onednn::qconv2d_pointwise`` /
``onednn::qlinear_pointwise`` with their activations and residual adds as
post-ops, literal scales and zero points, weights packed on the first call::

    %x_u8 = aten::to(aten::clamp_(aten::round_(aten::add(%zp, %x, 31.6)), 0, 255), 0, ..., 2)
    %packed = <the packed weight attribute, filled on the first call>
    %out = onednn::qconv2d_pointwise(%x_u8, 0.0316, 0, %packed, %w_scales, %w_zeros, %bias, [1, 1], [1, 1],
                                      [1, 1], 1, 1., 0, 6, "relu", [], "")

The stages, in order (``onednn_stages`` lists them; convert's pipeline
splices them in, so ``qgraph.pipeline.inspect`` and ``qgraph opt --lowering
onednn --pass NAME`` show each):

1. ``onednn-check``: the ops exist and the CPU multiplies u8 by s8 exactly
   (``support``); otherwise an error names what is missing;
2. ``onednn-freeze``: the module is frozen: attributes become constants,
   weights quantized constants, branches on attributes are gone;
3. ``onednn-normalize``: static qparams for every quantized value, one
   dequantize per use, only integer-exact ops reading quantized tensors
   (``normalize``);
4. ``onednn-absorb-epilogues``: activations and residual adds move into the
   conv or linear before them (``epilogues``);
5. ``onednn-integer-ops``: pooling, relu, channel shuffle, clamps, averages,
   cat and squeeze-excitation products on integers (``integer_ops``,
   ``integer_islands``, ``squeeze_excitation``);
6. ``onednn-conv-linear``: conv2d and linear islands become oneDNN ops with
   post-ops (``conv``, ``linear``);
7. ``onednn-boundaries``: float outputs, float ops recorded for the report,
   the last quantize/dequantize ops become arithmetic (``boundaries``);
8. ``onednn-cleanup``: dead code, constant pooling, and a check that no
   quantized dtype is left.

``finish_module`` (``module_state``, convert's stage
``onednn-module-state``) gives the result its state methods for
``torch.jit.save``; convert runs it last, once the float-op records are
stored on the module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from passes.lower_onednn.boundaries import lower_boundaries
from passes.lower_onednn.context import Lowering
from passes.lower_onednn.conv import conv_rewrites
from passes.lower_onednn.epilogues import absorb_epilogues
from passes.lower_onednn.integer_islands import integer_island_rewrites
from passes.lower_onednn.integer_ops import integer_op_rewrites
from passes.lower_onednn.linear import linear_rewrites
from passes.lower_onednn.module_state import finish_module
from passes.lower_onednn.normalize import metadata_reads_integers, normalize, one_dequantize_per_use
from passes.lower_onednn.qparams import analyse
from passes.lower_onednn.support import OnednnUnavailableError, check_onednn
from qgraph.ir import CppModule, Graph, NodeIndex, as_cpp, like, method_graph, walk
from qgraph.pattern import rewrite
from qgraph.pipeline import Pipeline, Stage

__all__ = [
    "lower_onednn",
    "onednn_stages",
    "finish_module",
    "OnednnUnavailableError",
    "check_onednn",
]

_QUANTIZED_DTYPES = (torch.quint8, torch.qint8, torch.qint32)
# torch._C bindings its stubs leave out (freezing, constant pooling).
_BINDINGS: Any = torch._C


def onednn_stages(preserved_attrs: Sequence[str] = ()) -> list[Stage]:
    """The stages of the oneDNN lowering, in order (see the module docstring); they share one ``Lowering``."""
    state: dict[str, Lowering] = {}

    def freeze(module: CppModule) -> CppModule:
        frozen: CppModule = _BINDINGS._freeze_module(module, list(preserved_attrs))
        state["lowering"] = Lowering(frozen)
        return frozen

    def normalize_stage(module: CppModule) -> None:
        state["lowering"].values = normalize(method_graph(module))

    def absorb(module: CppModule) -> None:
        graph = method_graph(module)
        absorb_epilogues(graph)
        torch._C._jit_pass_dce(graph)
        # A moved activation's uses now share the dequantize after it.
        one_dequantize_per_use(graph, NodeIndex(graph))
        metadata_reads_integers(NodeIndex(graph))
        # The moved quantize ops are new values; their parameters are constants like the others'.
        state["lowering"].values = analyse(graph)

    def integer(module: CppModule) -> None:
        lowering = state["lowering"]
        graph = method_graph(module)
        rewrite(graph, integer_op_rewrites(lowering) + integer_island_rewrites(lowering), NodeIndex(graph))
        torch._C._jit_pass_dce(graph)

    def conv_linear(module: CppModule) -> None:
        lowering = state["lowering"]
        graph = method_graph(module)
        rewrite(graph, conv_rewrites(lowering) + linear_rewrites(lowering), NodeIndex(graph))
        torch._C._jit_pass_dce(graph)

    def boundaries(module: CppModule) -> None:
        lower_boundaries(state["lowering"])

    def cleanup(module: CppModule) -> None:
        graph = method_graph(module)
        torch._C._jit_pass_dce(graph)
        _BINDINGS._jit_pass_constant_pooling(graph)
        _check_no_quantized_dtype(graph)

    return [
        Stage("onednn-check", lambda module: check_onednn()),
        Stage("onednn-freeze", freeze),
        Stage("onednn-normalize", normalize_stage),
        Stage("onednn-absorb-epilogues", absorb),
        Stage("onednn-integer-ops", integer),
        Stage("onednn-conv-linear", conv_linear),
        Stage("onednn-boundaries", boundaries),
        Stage("onednn-cleanup", cleanup),
    ]


def _check_no_quantized_dtype(graph: Graph) -> None:
    for node in walk(graph):
        kind = node.kind()
        if kind in ("aten::quantize_per_tensor", "aten::quantize_per_channel", "aten::dequantize"):
            raise RuntimeError(f"onednn lowering left {kind} in the graph: {node}")
        if kind == "prim::Constant" and node.hasAttribute("value") and node.kindOf("value") == "t":
            if node.t("value").dtype in _QUANTIZED_DTYPES:
                raise RuntimeError(f"onednn lowering left a quantized constant in the graph: {node}")


def lower_onednn(module: Any, preserved_attrs: Sequence[str] | None = None) -> Any:
    """Lower ``module`` (a ScriptModule or its ``._c`` after quant-dequant insertion) to oneDNN int8 ops.

    Returns the frozen, lowered module, of the same kind as ``module``,
    with its state methods (``finish_module``). Raises
    ``OnednnUnavailableError`` when the oneDNN ops cannot run exactly here.
    """
    module_c = as_cpp(module)
    if not module_c._has_method("forward"):
        name = module_c._type().qualified_name()
        raise ValueError(f"lower_onednn needs a module with a forward method; {name} has none")
    stages = onednn_stages(() if preserved_attrs is None else preserved_attrs)
    lowered = Pipeline("lower-onednn", stages).run(module_c)
    finish_module(lowered)
    return like(lowered, module)

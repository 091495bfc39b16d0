"""PyTorch's composite passes, as sequences of qgraph's passes in PyTorch's order.

PyTorch's ``insert_observers`` cleans up the graphs it observes first, its
``insert_quant_dequant`` carries quantization through the ops that need no
observer after inserting, and its ``finalize`` lowers to quantized kernels
in several steps. Here each step is a pass of its own, and each sequence a
list of ``qgraph.pipeline.Stage`` defined once, below:

- ``observer_preprocessing_stages``: swap functional linear (every method of
  every module), inline fork/wait, fuse linear, canonicalize traced convs,
  fold list mutation into list constructs (the methods reachable from the
  observed one);
- ``unshare_qconfig_types_stage`` (``unshare_op_qconfig_types_stage`` once
  more after the clean-up), ``insert_observers_stage``;
- ``quant_dequant_stages``: quantize / dequantize insertion, inlining,
  constant propagation, then the carrying of quantization through
  (``passes.quant_dequant.propagate``, ``replicate_quantize``,
  ``replicate_dequantize``);
- ``finalize_stages``: prepack / unpack, unsafe convs kept float, quant
  fusion, freeze, prepacking folded, clean-up;
- ``onednn_lowering_stages``, the second lowering beside ``finalize_stages``:
  oneDNN's int8 ops on plain integer tensors (``passes.lower_onednn``), and
  ``onednn_module_state_stage``, which convert runs after legalization.

The driver's pipelines (``qgraph.prepare``, ``qgraph.convert``) splice these
lists, so ``qgraph.pipeline.inspect`` shows every step and each runs once.
The standalone functions (``insert_observers``, ``insert_quant_dequant``,
``finalize``, exported by ``passes``) run the same lists on their own, as
PyTorch's passes of the same names do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from passes.canonicalize_conv import canonicalize_conv
from passes.legalize import legalize_quantized
from passes.linear import fuse_linear, swap_functional_linear
from passes.lower import fold_prepacking, freeze, insert_prepack_unpack, keep_unsafe_convs_in_float, quant_fusion
from passes.lower_onednn import finish_module, onednn_stages
from passes.observe import insert_observers_in_place
from passes.quant_dequant import (
    insert_quant_dequant_in_place,
    propagate_quantization,
    remove_redundant_dequantize,
    remove_redundant_quantization,
    replicate_choose_qparams_quant_dequant,
    replicate_clamp_scalar_args,
)
from passes.remove_list_mutation import remove_list_mutation
from passes.replicate_dequantize import replicate_dequantize
from passes.replicate_quantize import replicate_quantize
from passes.unshare_qconfig_types import unshare_qconfig_types
from qgraph.ir import CppModule, as_cpp, call_graph, clone_module, like, method_graph
from qgraph.pipeline import Pipeline, Stage, call_tree_stage, method_stage
from qgraph.quant.quant_type import QuantType, check_quant_type

__all__ = [
    "observer_preprocessing_stages",
    "unshare_qconfig_types_stage",
    "unshare_op_qconfig_types_stage",
    "insert_observers_stage",
    "quant_dequant_stages",
    "finalize_stages",
    "onednn_lowering_stages",
    "onednn_module_state_stage",
    "cleanup_stage",
    "legalize_stage",
    "insert_observers",
    "insert_quant_dequant",
    "finalize",
]


# --- observer insertion -------------------------------------------------------------------


def _inline_fork_wait(method_name: str) -> Stage:
    def run(module: CppModule) -> None:
        # A forked call can hide further calls, so repeat until no fork is left.
        while True:
            calls = call_graph(module, method_name)
            graphs = [calls.nodes[key]["graph"] for key in calls.nodes]
            forked = [graph for graph in graphs if graph.findNode("prim::fork", True) is not None]
            if not forked:
                return
            for graph in forked:
                torch._C._jit_pass_inline_fork_wait(graph)

    return Stage("inline-fork-wait", run)


def observer_preprocessing_stages(method_name: str = "forward") -> list[Stage]:
    """The clean-up PyTorch's insert_observers does first, so that rules meet one spelling of each op.

    Every step is idempotent: a graph already cleaned up is left as it is.
    """

    def swap(module: CppModule) -> None:
        # Every method of every module, not only the reachable ones, as the reference does.
        swap_functional_linear(module)

    return [
        Stage("swap-functional-linear", swap),
        _inline_fork_wait(method_name),
        call_tree_stage("fuse-linear", lambda graph: fuse_linear(graph, swap_functional=False), method_name),
        call_tree_stage("canonicalize-conv", canonicalize_conv, method_name),
        call_tree_stage("remove-list-mutation", remove_list_mutation, method_name),
    ]


def unshare_qconfig_types_stage(qconfig_dict: Any, method_name: str = "forward") -> Stage:
    """Instances whose subtrees resolve to different qconfigs get class types of their own."""
    return Stage("unshare-qconfig-types", lambda module: unshare_qconfig_types(module, qconfig_dict, method_name))


def unshare_op_qconfig_types_stage(method_name: str, qconfig_dict: Any) -> Stage:
    """The same again on the cleaned-up graphs, for a QConfigMapping naming ops the clean-up makes (aten::linear)."""
    return Stage("unshare-op-qconfig-types", lambda module: unshare_qconfig_types(module, qconfig_dict, method_name))


def insert_observers_stage(method_name: str, qconfig_dict: Any, quant_type: Any) -> Stage:
    """Observers after every value quantization needs (graphs cleaned up, types unshared already)."""
    return Stage(
        "insert-observers", lambda module: insert_observers_in_place(module, method_name, qconfig_dict, quant_type)
    )


def insert_observers(module: Any, method_name: str, qconfig_dict: Any, inplace: bool, quant_type: Any) -> Any:
    """Observe every value of ``module.<method_name>`` (and what it calls) that quantization needs.

    Called alone, it does what PyTorch's pass of the same name does: the
    graphs are cleaned up first (``observer_preprocessing_stages``), then
    instances whose qconfigs differ get class types of their own, then the
    observers go in (``passes.observe.insert_observers`` has the
    rules).

    ``module`` is a ScriptModule or its ``._c`` and comes back as the same
    kind; ``qconfig_dict`` may hold QConfigs or scripted QConfigs
    (``qgraph.script_qconfig``); ``quant_type`` is a ``QuantType`` or
    ``"static"`` / ``"dynamic"``. The observers go into a clone with fresh
    class types, so the caller's graphs never change (nor the types that
    scripting hands to later instances of the same Python class); with
    ``inplace=False`` the clone has copies of the tensors, with
    ``inplace=True`` it shares the caller's, and a Python ScriptModule is
    re-pointed at it.
    """
    _check_method(as_cpp(module), method_name)
    root = clone_module(as_cpp(module), share_values=inplace)
    stages = [
        *observer_preprocessing_stages(method_name),
        unshare_qconfig_types_stage(qconfig_dict, method_name),
        insert_observers_stage(method_name, qconfig_dict, quant_type),
    ]
    root = Pipeline("insert-observers", stages).run(root)
    if isinstance(module, torch.jit.ScriptModule) and inplace:
        module._reconstruct(root)
        return module
    return like(root, module)


# --- quantize / dequantize insertion ------------------------------------------------------


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


# --- lowering -------------------------------------------------------------------------------


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


def _check_method(module: CppModule, method_name: str) -> None:
    if not module._has_method(method_name):
        raise ValueError(f"module {module._type().qualified_name()} has no method {method_name!r}")


def _check_preserved_attrs(preserved_attrs: Sequence[str]) -> list[str]:
    if isinstance(preserved_attrs, str) or not all(isinstance(name, str) for name in preserved_attrs):
        raise TypeError(f"preserved_attrs must be a list of attribute names, got {preserved_attrs!r}")
    return list(preserved_attrs)

"""convert: a calibrated, observed model to its quantized form, as pipeline stages.

``convert_pipeline`` lists the stages, each a pass of its own (the
sequences of ``passes.composite``), so ``qgraph.pipeline.inspect`` shows
every step:

0. for a model prepared for quantization-aware training
   (``prepare_qat_jit``), ``qat_convert_stages``: its Conv-BatchNorm
   modules folded with their trained statistics, its weight fake-quants
   run on the final weights, which are clamped to their range (no-ops for
   a post-training model);
1. ``quant_dequant_stages``: observers become quantize / dequantize pairs,
   ``forward`` is inlined and quantization carried through the ops that need
   no observer. With ``debug=True`` the model stops here (then ``cleanup``
   of ``forward``) and computes the quantized numerics with float ops;
2. otherwise a lowering. ``lowering="reference"``: ``finalize_stages``,
   prepack / unpack, unsafe convs kept float, quant fusion, freeze,
   prepacking folded, clean-up of every method (PyTorch's quantized ops,
   bit for bit the reference's model). ``lowering="onednn"``:
   ``onednn_lowering_stages``, oneDNN's int8 ops on plain integer tensors
   with fused epilogues (``passes.lower_onednn``), static quantization only;
3. ``legalize-quantized``: graphs PyTorch's kernels or loader would reject
   are made to run, and the ops left float on purpose are recorded; after
   the oneDNN lowering, ``onednn-module-state`` then gives the module the
   state methods that save it (the records included).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch.ao.quantization.quant_type import QuantType

from passes.composite import (
    cleanup_stage,
    finalize_stages,
    legalize_stage,
    onednn_lowering_stages,
    onednn_module_state_stage,
    quant_dequant_stages,
)
from passes.qat import fold_trained_conv_bn, settle_weight_fake_quants
from qgraph.ir import CppModule, as_python, clone_module, drop_attributes, named_modules, walk
from qgraph.pipeline import Pipeline, Stage, method_graphs
from qgraph.prepare import PREPARED_MARK
from qgraph.quant.lowering import LOWERINGS, check_lowering
from qgraph.quant.observers import is_observer_path
from qgraph.quant.qat_modules import is_conv_bn_module, is_fake_quant
from qgraph.quant.quant_type import check_quant_type, parse_quant_type

__all__ = ["LOWERINGS", "convert", "convert_pipeline", "qat_convert_stages"]


def _check_model(model: Any) -> None:
    if not isinstance(model, torch.jit.ScriptModule):
        raise ValueError(f"input must be a script module, got: {type(model)}")
    if not model._c._has_method("forward"):
        raise ValueError("input script module does not have a forward method")


def _check_prepared(module_c: CppModule, quant_type: QuantType) -> None:
    """ValueError for a model that prepare never saw: no prepare mark, no observers, nothing quantized.

    Models prepared by other tools have observers but no mark.
    """
    if module_c.hasattr(PREPARED_MARK):
        return
    if any(is_observer_path(path) for path, _ in named_modules(module_c)):
        return
    # Dynamic prepare quantizes RNNs itself and may leave no observer behind.
    if any(
        node.kind().startswith(("quantized::", "aten::quantized_"))
        for _, _, graph in method_graphs(module_c, distinct=True)
        for node in walk(graph)
    ):
        return
    prepare_api = "prepare_dynamic_jit" if quant_type == QuantType.DYNAMIC else "prepare_jit"
    raise ValueError(
        f"the model has no observers: it was not prepared. Call qgraph.{prepare_api}(model, qconfig_dict)"
        + (", run calibration data through the result," if quant_type == QuantType.STATIC else "")
        + " and convert what it returns (a qconfig_dict that quantizes nothing leaves nothing to convert)"
    )


def qat_convert_stages() -> list[Stage]:
    """What eager convert does to a QAT model before quantizing it; nothing for a post-training model."""

    def fold(module: CppModule) -> None:
        fold_trained_conv_bn(module)

    def settle(module: CppModule) -> None:
        settle_weight_fake_quants(module)

    return [Stage("fold-trained-conv-bn", fold), Stage("settle-weight-fake-quants", settle)]


def convert_pipeline(
    debug: bool, quant_type: QuantType, preserved_attrs: list[str], lowering: str = "reference"
) -> Pipeline:
    """The stages of ``convert``; see the module docstring."""
    _check_lowering_for(check_lowering(lowering), quant_type)
    after: list = []
    if debug:
        lowered = [cleanup_stage(["forward"])]
    elif lowering == "onednn":
        lowered = onednn_lowering_stages(preserved_attrs)
        # Last, once the float-op records are on the module: the state methods save them too.
        after = [onednn_module_state_stage()]
    else:
        lowered = finalize_stages(quant_type, preserved_attrs)
    stages = [
        *qat_convert_stages(),
        *quant_dequant_stages("forward", debug, quant_type),
        *lowered,
        legalize_stage(),
        *after,
    ]
    return Pipeline("convert", stages)


def _check_lowering_for(lowering: str, quant_type: QuantType) -> None:
    if lowering == "onednn" and quant_type != QuantType.STATIC:
        raise ValueError(
            "lowering='onednn' lowers static quantization; dynamic quantization has the reference lowering only"
        )


def _warn_if_training(module_c: CppModule) -> None:
    """A QAT model converted in training mode: say that ``model.eval()`` is the user's step, as in PyTorch."""
    if not (module_c.hasattr("training") and module_c.getattr("training")):
        return
    if any(is_conv_bn_module(sub) or is_fake_quant(sub) for _, sub in named_modules(module_c)):
        warnings.warn(
            "convert_jit got a quantization-aware-training model still in training mode; it converts it in eval "
            "mode (running BatchNorm statistics): call model.eval() before convert_jit",
            UserWarning,
            stacklevel=4,
        )


def _set_eval(module_c: CppModule) -> None:
    """``module.eval()`` on the C++ module tree, without building Python wrappers for it."""
    for _, submodule in named_modules(module_c):
        if submodule.hasattr("training"):
            submodule.setattr("training", False)


def _on_cpu(module_c: CppModule) -> bool:
    """Whether every parameter and buffer of the module tree is on the CPU already."""
    tensors = cast(Any, torch._C)._jit_debug_module_iterators(module_c)
    return all(t.device.type == "cpu" for _, t in [*tensors["named_parameters_r"], *tensors["named_buffers_r"]])


def convert(
    model: Any,
    inplace: bool = False,
    debug: bool = False,
    preserved_attrs: Sequence[str] | None = None,
    quant_type: Any = QuantType.STATIC,
    lowering: str = "reference",
) -> torch.jit.ScriptModule:
    """Quantize a model prepared with observers and calibrated.

    ``debug=True`` returns the reference model (float ops between
    ``aten::quantize_per_tensor`` / ``aten::dequantize``), whatever the
    lowering; otherwise the frozen model running quantized kernels: PyTorch's
    quantized ops (``lowering="reference"``) or oneDNN's int8 ops on plain
    integer tensors (``lowering="onednn"``, static quantization only).
    ``preserved_attrs`` names attributes freezing must keep. ``inplace=True``
    rewrites ``model`` itself and returns it; otherwise ``model`` is left
    unchanged.
    """
    _check_model(model)
    quant_type = check_quant_type(parse_quant_type(quant_type))
    _check_lowering_for(check_lowering(lowering), quant_type)
    if preserved_attrs is None:
        preserved_attrs = []
    _check_prepared(model._c, quant_type)
    _warn_if_training(model._c)
    module_c = model._c if inplace else clone_module(model._c)
    if module_c.hasattr(PREPARED_MARK):
        module_c = drop_attributes(module_c, {module_c._type().qualified_name(): {PREPARED_MARK}})
    # Convert produces an inference model: eval mode decides the graph of
    # dropout and batch norm that freezing and fusion see.
    _set_eval(module_c)
    if not debug and not _on_cpu(module_c):
        # Quantized kernels run on CPU.
        as_python(module_c).cpu()
    result = convert_pipeline(debug, quant_type, list(preserved_attrs), lowering).run(module_c)
    if inplace:
        model._reconstruct(result)
        return model
    return as_python(result)

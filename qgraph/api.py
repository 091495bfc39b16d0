"""qgraph's public entry points: a drop-in for torch.ao.quantization's JIT API.

Each function checks its input, picks the quantization type and hands over to
the pipelines in ``qgraph.prepare`` and ``qgraph.convert``; the passes they
run, in order, are listed there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.ao.quantization.quant_type import QuantType

from passes.fold_conv_bn import fold_conv_bn
from passes.quant_dequant import first_non_finite_site, non_finite_calibration_message
from qgraph import ir
from qgraph.convert import convert
from qgraph.prepare import check_eval_mode, check_script_module, prepare
from qgraph.prepare_qat import prepare_qat
from qgraph.quant.lowering import check_lowering
from qgraph.quant.qconfig import script_qconfig, script_qconfig_dict

__all__ = [
    "fuse_conv_bn_jit",
    "prepare_jit",
    "prepare_qat_jit",
    "convert_jit",
    "quantize_jit",
    "prepare_dynamic_jit",
    "convert_dynamic_jit",
    "quantize_dynamic_jit",
    "script_qconfig",
    "script_qconfig_dict",
]


def fuse_conv_bn_jit(model: torch.jit.ScriptModule, inplace: bool = False) -> torch.jit.ScriptModule:
    """Fold each Conv{1,2,3}d -> BatchNorm{1,2,3}d submodule pair into the conv.

    The model must be in eval mode (the batch norm's running statistics are
    folded). ``inplace=False`` leaves ``model`` untouched.

    Before::

        %x1 = prim::CallMethod[name="forward"](%conv, %x)
        %x2 = prim::CallMethod[name="forward"](%bn, %x1)

    After::

        %x1 = prim::CallMethod[name="forward"](%conv, %x)
    """
    check_script_module(model)
    check_eval_mode(model)
    # The pass folds a clone, also for inplace=True: a method that has already
    # run keeps executing its cached plan, so edits to its graph in place
    # would be ignored (every traced model has run).
    module_c = fold_conv_bn(ir.as_cpp(model))
    if inplace:
        model._reconstruct(module_c)
        return model
    return ir.as_python(module_c)


def prepare_jit(model: torch.jit.ScriptModule, qconfig_dict: dict, inplace: bool = False) -> torch.jit.ScriptModule:
    """Insert observers for static quantization; run calibration data through the result next."""
    return prepare(model, qconfig_dict, inplace, QuantType.STATIC)


def prepare_qat_jit(model: torch.jit.ScriptModule, qconfig_dict: dict, inplace: bool = False) -> torch.jit.ScriptModule:
    """Prepare a model in training mode for quantization-aware training with QAT qconfigs.

    Fake-quants go where ``prepare_jit`` puts observers; Conv-BatchNorm pairs
    train as PyTorch's QAT ``ConvBn{n}d`` modules do. Train the result with
    an ordinary loop, switch it with ``qgraph.qat``, then ``model.eval()``
    and ``convert_jit``.
    """
    return prepare_qat(model, qconfig_dict, inplace)


def prepare_dynamic_jit(
    model: torch.jit.ScriptModule, qconfig_dict: dict, inplace: bool = False
) -> torch.jit.ScriptModule:
    """Insert weight observers for dynamic quantization (activations are quantized at run time)."""
    return prepare(model, qconfig_dict, inplace, QuantType.DYNAMIC)


def convert_jit(
    model: torch.jit.ScriptModule,
    inplace: bool = False,
    debug: bool = False,
    preserved_attrs: Sequence[str] | None = None,
    *,
    lowering: str = "reference",
) -> torch.jit.ScriptModule:
    """Turn a calibrated model into a quantized one (``debug=True``: quantize/dequantize around float ops).

    ``lowering="reference"`` runs PyTorch's quantized ops, bit for bit as
    PyTorch's own graph-mode convert; ``lowering="onednn"`` runs
    oneDNN's int8 ops on plain uint8/int8 tensors with fused epilogues (no
    quantized dtype in the model; ``OnednnUnavailableError`` where the ops
    cannot run exactly).
    """
    return convert(model, inplace, debug, preserved_attrs, QuantType.STATIC, lowering)


def convert_dynamic_jit(
    model: torch.jit.ScriptModule,
    inplace: bool = False,
    debug: bool = False,
    preserved_attrs: Sequence[str] | None = None,
) -> torch.jit.ScriptModule:
    """Dynamic counterpart of ``convert_jit``: int8 or fp16 weights, activations quantized at run time."""
    return convert(model, inplace, debug, preserved_attrs, QuantType.DYNAMIC)


def quantize_jit(
    model: torch.jit.ScriptModule,
    qconfig_dict: dict,
    run_fn: Callable[..., Any],
    run_args: Sequence[Any],
    inplace: bool = False,
    debug: bool = False,
    *,
    lowering: str = "reference",
) -> torch.jit.ScriptModule:
    """Prepare, calibrate with ``run_fn(model, *run_args)``, and convert (with ``lowering``, see ``convert_jit``)."""
    if not callable(run_fn):
        raise ValueError("quantize_jit needs a calibration function run_fn(model, *run_args)")
    if not run_args:
        raise ValueError("quantize_jit needs calibration data: run_args is empty")
    check_lowering(lowering)
    prepared = prepare_jit(model, qconfig_dict, inplace)
    try:
        run_fn(prepared, *run_args)
    except RuntimeError as err:
        _explain_non_finite_calibration(prepared, err)
        raise
    # prepare already copied the model when inplace is False.
    return convert_jit(prepared, True, debug, lowering=lowering)


# What PyTorch's observers say when the data they get holds NaN or inf
# (HistogramObserver's torch.histc); the TorchScript traceback before it
# buries the cause.
_NON_FINITE_FAILURE = "is not finite"


def _explain_non_finite_calibration(prepared: torch.jit.ScriptModule, err: RuntimeError) -> None:
    """Raise a short ValueError when ``err`` came from non-finite calibration data; otherwise return."""
    site = first_non_finite_site(prepared._c)
    message = str(err).strip().splitlines()[-1] if str(err).strip() else ""
    if site is None and _NON_FINITE_FAILURE not in message:
        return
    raise ValueError(non_finite_calibration_message(site, message)) from None


def quantize_dynamic_jit(
    model: torch.jit.ScriptModule, qconfig_dict: dict, inplace: bool = False, debug: bool = False
) -> torch.jit.ScriptModule:
    """Prepare and convert for dynamic quantization in one call (no calibration needed)."""
    prepared = prepare_dynamic_jit(model, qconfig_dict, inplace)
    return convert_dynamic_jit(prepared, True, debug)

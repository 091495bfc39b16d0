"""prepare: a scripted or traced model in, the same model with observers out.

The stages, run by a ``qgraph.pipeline.Pipeline`` named ``"prepare"`` (so
``qgraph.pipeline.inspect`` can dump the graphs after each one):

1. ``fold-conv-bn``: Conv2d/Conv3d followed by their BatchNorm become one conv;
2. ``unshare-qconfig-types``: instances of one class type whose subtrees got
   different qconfigs get class types of their own;
3.-7. the clean-up that observer insertion needs first
   (``passes._observer_preprocessing``, one stage per step):
   ``swap-functional-linear``, ``inline-fork-wait``, ``fuse-linear``,
   ``canonicalize-conv``, ``remove-list-mutation``;
8. ``insert-observers``: ``passes.insert_observers_in_place`` (without its own
   clean-up: the stages above did it).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.ao.quantization.quant_type import QuantType

from passes._observer_preprocessing import PREPROCESSING
from passes.fold_conv_bn import fold_conv_bn_in_place
from passes.insert_observers import insert_observers_in_place, parse_quant_type
from passes.quantize_rnn import quantize_rnn
from qgraph.ir import CppModule, as_cpp, as_python, clone_module, unshare_types
from qgraph.pipeline import Pipeline, Stage
from qgraph.qconfig import _resolve, check_qconfig_dict, qconfig_paths_needing_own_type, script_qconfig_dict

__all__ = ["prepare", "check_script_module", "prepare_pipeline"]


def check_script_module(model: Any) -> None:
    """ValueError unless ``model`` is a TorchScript module (scripted or traced)."""
    if isinstance(model, torch.jit.ScriptModule):
        return
    if isinstance(model, torch.nn.Module):
        raise ValueError(
            f"input must be a TorchScript module, got the eager module {type(model).__name__}; "
            "script it (torch.jit.script), trace it (torch.jit.trace) or use qgraph.capture first"
        )
    raise ValueError(f"input must be a TorchScript module (torch.jit.ScriptModule), got {type(model).__name__}")


def _on_forward(step):
    def run(module: CppModule) -> None:
        step(module, "forward")

    return run


def _fold_conv_bn(module: CppModule) -> CppModule:
    # prepare cloned the caller's model already.
    return as_cpp(fold_conv_bn_in_place(module))


def _unshare_qconfig_types(qconfig_dict: dict):
    def run(module: CppModule) -> CppModule | None:
        paths = qconfig_paths_needing_own_type(module, _resolve(module, qconfig_dict))
        return unshare_types(module, paths) if paths else None

    return run


def _insert_observers(qconfig_dict: dict, quant_type: QuantType):
    def run(module: CppModule) -> CppModule:
        return insert_observers_in_place(module, "forward", qconfig_dict, quant_type)

    return run


def _quantize_rnn(qconfig_dict: dict):
    def run(module: CppModule) -> CppModule:
        return quantize_rnn(module, qconfig_dict)

    return run


def prepare_pipeline(qconfig_dict: dict, quant_type: QuantType) -> Pipeline:
    """The stages of ``prepare`` for an already scripted ``qconfig_dict``.

    Dynamic quantization quantizes LSTM/GRU and their cells here, before
    observers go in: their weights need no calibration, and prepare then
    never sees RNN ops (so it puts no observer on their inputs or weights).
    """
    rnn = [Stage("quantize-rnn", _quantize_rnn(qconfig_dict))] if quant_type == QuantType.DYNAMIC else []
    return Pipeline(
        "prepare",
        [
            Stage("fold-conv-bn", _fold_conv_bn),
            Stage("unshare-qconfig-types", _unshare_qconfig_types(qconfig_dict)),
            *rnn,
            *(Stage(name, _on_forward(step)) for name, step in PREPROCESSING),
            Stage("insert-observers", _insert_observers(qconfig_dict, quant_type)),
        ],
    )


def prepare(
    model: torch.jit.ScriptModule,
    qconfig_dict: dict,
    inplace: bool = False,
    quant_type: QuantType | str = QuantType.STATIC,
) -> torch.jit.ScriptModule:
    """Preprocess ``model`` and insert observers; calibrate the result, then convert it.

    ``qconfig_dict`` maps module paths to QConfigs (see ``qgraph.qconfig``).
    With ``inplace=False`` the caller's model is left exactly as it was;
    with ``inplace=True`` the same Python object is returned, now prepared
    (its tensors are copies: the rewrites never touch the class types the
    model shares with other instances).
    """
    check_script_module(model)
    if not model._c._has_method("forward"):
        raise ValueError(f"the script module {model.original_name} has no forward method to prepare")
    check_qconfig_dict(qconfig_dict)
    kind = parse_quant_type(quant_type)
    scripted = script_qconfig_dict(qconfig_dict)
    # Even in place, the rewrites go to fresh class types: scripting caches
    # class types, and a type changed here would leak into every later
    # instance of the same Python class. The caller's object is then pointed
    # at the result.
    module = clone_module(as_cpp(model))
    module = prepare_pipeline(scripted, kind).run(module)
    if inplace:
        model._reconstruct(module)
        return model
    return as_python(module)

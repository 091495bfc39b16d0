"""prepare: a scripted or traced model in, the same model with observers out.

``prepare`` checks its input, clones the model and runs the pipeline
``prepare_pipeline`` defines, the one the command line's ``qgraph passes``
runs too (``qgraph.pipeline.inspect`` can dump the graphs after each stage):

1. ``fold-conv-bn``: Conv-BatchNorm pairs become one conv;
2. ``unshare-qconfig-types``: instances of one class type whose subtrees
   got different qconfigs get class types of their own;
3. dynamic quantization only, ``quantize-rnn``: LSTM / GRU and their cells
   become their dynamic quantized kernels;
4. the clean-up observer insertion needs first, one stage per step
   (``passes.composite.observer_preprocessing_stages``):
   ``swap-functional-linear``, ``inline-fork-wait``, ``fuse-linear``,
   ``canonicalize-conv``, ``remove-list-mutation``;
5. a ``QConfigMapping`` whose entries name ops only,
   ``unshare-op-qconfig-types``: the same unsharing again, for the ops as
   the clean-up left them (``aten::linear`` from a matmul and an add);
6. ``insert-observers``.

``dedup_module_uses`` is not a stage, as in PyTorch's prepare_jit: an
instance called twice is observed at each call site, in the caller's graph,
so it needs no copies, and copies would give each call its own weight
observer, which changes the quantized bits.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.ao.quantization.quant_type import QuantType

from passes.composite import (
    insert_observers_stage,
    observer_preprocessing_stages,
    unshare_op_qconfig_types_stage,
    unshare_qconfig_types_stage,
)
from passes.fold_conv_bn import BN_TRAINING, fold_conv_bn_in_place
from passes.rnn import quantize_rnn
from qgraph.ir import (
    CppModule,
    as_cpp,
    as_python,
    clone_module,
    is_constant,
    is_instance_of,
    method_graph,
    named_modules,
    register_attribute,
    walk,
)
from qgraph.pipeline import Pipeline, Stage
from qgraph.quant.qconfig import check_qconfig_dict, script_qconfig_dict
from qgraph.quant.qconfig_mapping import is_qconfig_mapping, mapping_entries, reads_graphs
from qgraph.quant.quant_type import parse_quant_type

# A bool attribute on the root of every prepared model; convert removes it.
PREPARED_MARK = "_qgraph_prepared"

__all__ = [
    "PREPARED_MARK",
    "prepare",
    "check_script_module",
    "check_eval_mode",
    "check_qconfig_kind",
    "prepare_pipeline",
]


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


_BATCH_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)


def _normalises_with_batch_statistics(batch_norm: CppModule) -> bool:
    if batch_norm.hasattr("training") and batch_norm.getattr("training"):
        return True
    # A traced BatchNorm keeps the mode it was traced in, whatever its flag says now
    # (one the trace never called has no method at all).
    if not batch_norm._has_method("forward"):
        return False
    return any(
        node.kind() == "aten::batch_norm" and is_constant(node.inputsAt(BN_TRAINING), True)
        for node in walk(method_graph(batch_norm))
    )


def check_eval_mode(model: Any) -> None:
    """ValueError when a BatchNorm of ``model`` is in training mode (quantization is for inference).

    In training mode a BatchNorm normalises each batch with that batch's
    statistics, which no folded conv weight and no quantized kernel
    reproduces (PyTorch's graph mode folds it with the running statistics
    anyway, so its quantized model computes something the float model never
    did).
    """
    for path, module in named_modules(as_cpp(model)):
        if is_instance_of(module, *_BATCH_NORMS) and _normalises_with_batch_statistics(module):
            where = f"its BatchNorm '{path}'" if path else "it"
            raise ValueError(
                f"the model is in training mode ({where} normalises with batch statistics); quantization is "
                "for inference: call model.eval() before scripting or tracing it (a traced model keeps the mode "
                "it was traced in)"
            )


def check_qconfig_kind(scripted_qconfig_dict: Any, quant_type: QuantType) -> None:
    """ValueError when a dynamic qconfig (activations quantized at run time) goes to the static API.

    Its activation observer is a ``PlaceholderObserver(is_dynamic=True)``,
    which computes no qparams from calibration. A static qconfig with the
    dynamic API is valid (PyTorch's own tests use ``default_qconfig`` so):
    its weight observer quantizes the weights and activations get qparams at
    run time.
    """
    if quant_type != QuantType.STATIC:
        return
    if is_qconfig_mapping(scripted_qconfig_dict):
        entries = [(f"QConfigMapping {where}", q) for where, q in mapping_entries(scripted_qconfig_dict)]
    else:
        entries = [(f"qconfig_dict[{key!r}]", q) for key, q in scripted_qconfig_dict.items()]
    for where, qconfig in entries:
        activation = None if qconfig is None else qconfig.activation
        if activation is not None and activation.hasattr("is_dynamic") and activation.getattr("is_dynamic"):
            raise ValueError(
                f"{where} is a dynamic qconfig (its activation observer quantizes at run time); "
                "use quantize_dynamic_jit or prepare_dynamic_jit / convert_dynamic_jit for it, or a static qconfig "
                "such as get_default_qconfig('x86') with quantize_jit / prepare_jit"
            )


def _fold_conv_bn(module: CppModule) -> CppModule:
    # prepare cloned the caller's model already.
    return as_cpp(fold_conv_bn_in_place(module))


def _names_ops(qconfig_dict: Any) -> bool:
    return is_qconfig_mapping(qconfig_dict) and reads_graphs(qconfig_dict)


def prepare_pipeline(qconfig_dict: Any, quant_type: QuantType) -> Pipeline:
    """The stages of ``prepare`` for an already scripted ``qconfig_dict``.

    Dynamic quantization quantizes LSTM/GRU and their cells before
    observers go in: their weights need no calibration, and observer
    insertion then never sees RNN ops (so it puts no observer on their
    inputs or weights).
    """

    def rnn(module: CppModule) -> CppModule:
        # The unshare-qconfig-types stage before it unshared what RNN plans would.
        return quantize_rnn(module, qconfig_dict, unshare=False)

    return Pipeline(
        "prepare",
        [
            Stage("fold-conv-bn", _fold_conv_bn),
            unshare_qconfig_types_stage(qconfig_dict),
            *([Stage("quantize-rnn", rnn)] if quant_type == QuantType.DYNAMIC else []),
            *observer_preprocessing_stages("forward"),
            *([unshare_op_qconfig_types_stage("forward", qconfig_dict)] if _names_ops(qconfig_dict) else []),
            insert_observers_stage("forward", qconfig_dict, quant_type),
        ],
    )


def prepare(
    model: torch.jit.ScriptModule,
    qconfig_dict: dict,
    inplace: bool = False,
    quant_type: QuantType | str = QuantType.STATIC,
) -> torch.jit.ScriptModule:
    """Preprocess ``model`` and insert observers; calibrate the result, then convert it.

    ``qconfig_dict`` maps module paths to QConfigs (see ``qgraph.quant.qconfig``),
    or is a ``QConfigMapping`` (see ``qgraph.quant.qconfig_mapping``).
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
    check_qconfig_kind(scripted, kind)
    check_eval_mode(model)
    # Even in place, the rewrites go to fresh class types: scripting caches
    # class types, and a type changed here would leak into every later
    # instance of the same Python class. The caller's object is then pointed
    # at the result.
    module = clone_module(as_cpp(model))
    module = prepare_pipeline(scripted, kind).run(module)
    # A qconfig_dict may leave nothing to observe; convert still needs to tell
    # such a model from one that was never prepared.
    register_attribute(module, PREPARED_MARK, True)
    if inplace:
        model._reconstruct(module)
        return model
    return as_python(module)

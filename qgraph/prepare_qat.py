"""prepare for quantization-aware training: a model in training mode in, a model that trains with fake-quants out.

``prepare_qat`` checks its input, clones the model and runs
``prepare_qat_pipeline``:

1. ``swap-conv-bn-qat``: Conv-BatchNorm pairs become QAT ``ConvBn{n}d``
   modules that train with batch statistics and fake-quantize their folded
   weight (``passes.qat``), instead of being folded with running statistics;
2. ``unshare-qconfig-types``, the clean-up stages and ``insert-observers``
   of ``prepare_jit``: with QAT qconfigs the observers are fake-quant
   modules, placed exactly where ``prepare_jit`` places observers (the
   ``ConvBn{n}d`` calls observed as convs, their inside left to their own
   weight fake-quant);
3. ``trainable-parameters``: every parameter is an ``nn.Parameter`` leaf in
   its slot (cloning a module records each parameter as the output of a
   copy, which optimizers refuse);
4. ``place-fake-quants``: the inserted fake-quants move to the device of the
   model's parameters, as eager QAT builds them there.

The result trains with an ordinary loop; ``qgraph.qat`` switches its
observers, fake-quants and BatchNorm statistics; ``convert_jit`` turns it
into the int8 model ``prepare_jit`` + ``convert_jit`` would give for the
trained float model.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch.ao.quantization.quant_type import QuantType

from passes.composite import (
    insert_observers_stage,
    observer_preprocessing_stages,
    unshare_op_qconfig_types_stage,
    unshare_qconfig_types_stage,
)
from passes.qat import swap_conv_bn_for_qat
from qgraph.ir import CppModule, as_cpp, as_python, class_name_of, clone_module, named_modules, register_attribute
from qgraph.pipeline import Pipeline, Stage
from qgraph.prepare import PREPARED_MARK, check_qconfig_kind, check_script_module
from qgraph.quant.qat_modules import is_conv_bn_module, is_fake_quant
from qgraph.quant.qconfig import check_qconfig_dict, qconfigs_by_path, script_qconfig_dict
from qgraph.quant.qconfig_mapping import is_qconfig_mapping, map_qconfigs, mapping_entries, reads_graphs

__all__ = ["prepare_qat", "prepare_qat_pipeline", "check_qat_qconfigs"]

_QAT_QCONFIG_HINT = (
    "use a QAT qconfig, whose observers fake-quantize: torch.ao.quantization.get_default_qat_qconfig('x86') "
    "(or 'fbgemm', 'qnnpack'), or torch.ao.quantization.default_qat_qconfig"
)


# Observers that take no qparams from data, which PyTorch's QAT qconfig mappings use
# for ops that reuse their input's quantization (reshape, ...) or stay float.
_COMPUTE_NO_QPARAMS = frozenset(
    f"torch.ao.quantization.observer.{name}" for name in ("NoopObserver", "ReuseInputObserver", "PlaceholderObserver")
)


def check_qat_qconfigs(scripted_qconfig_dict: Any) -> None:
    """ValueError unless every qconfig's activation and weight observers fake-quantize (or take no qparams)."""
    if is_qconfig_mapping(scripted_qconfig_dict):
        # Object-type entries are left to the mapping's author: PyTorch's own QAT mappings give some
        # op types (PReLU, ...) post-training observers.
        entries = [
            (f"QConfigMapping {where}", q)
            for where, q in mapping_entries(scripted_qconfig_dict)
            if not where.startswith(("object_type", "module_name_object_type_order"))
        ]
    else:
        entries = [(f"qconfig_dict[{key!r}]", q) for key, q in scripted_qconfig_dict.items()]
    for where, qconfig in entries:
        if qconfig is None:
            continue
        for role in ("activation", "weight"):
            observer = getattr(qconfig, role)
            if not is_fake_quant(observer) and class_name_of(observer._type()) not in _COMPUTE_NO_QPARAMS:
                raise ValueError(
                    f"{where} is not a QAT qconfig: its {role} observer does not fake-quantize; " + _QAT_QCONFIG_HINT
                )


def prepare_qat_pipeline(qconfig_dict: Any) -> Pipeline:
    """The stages of ``prepare_qat`` for an already scripted ``qconfig_dict`` (or ``QConfigMapping``).

    The swap turns off quantization inside the new modules (their inside is
    theirs, not observed) in a copy of ``qconfig_dict``, which the stages
    after it read.
    """
    mapping = is_qconfig_mapping(qconfig_dict)
    qconfigs: Any = map_qconfigs(qconfig_dict, lambda qconfig: qconfig) if mapping else dict(qconfig_dict)

    def swap(module: CppModule) -> CppModule:
        result = swap_conv_bn_for_qat(module, qconfigs_by_path(module, qconfig_dict))
        for path, sub in named_modules(result):
            if is_conv_bn_module(sub):
                if mapping:
                    qconfigs.set_module_name(path, None)
                else:
                    qconfigs[path] = None
        return result

    names_ops = mapping and reads_graphs(qconfig_dict)
    return Pipeline(
        "prepare-qat",
        [
            Stage("swap-conv-bn-qat", swap),
            unshare_qconfig_types_stage(qconfigs),
            *observer_preprocessing_stages("forward"),
            *([unshare_op_qconfig_types_stage("forward", qconfigs)] if names_ops else []),
            insert_observers_stage("forward", qconfigs, QuantType.STATIC),
            Stage("trainable-parameters", _trainable_parameters),
            Stage("place-fake-quants", _place_fake_quants),
        ],
    )


def _tensors(module: CppModule, kind: str) -> list[tuple[str, torch.Tensor]]:
    return cast(Any, torch._C)._jit_debug_module_iterators(module)[kind]


def _place_fake_quants(module: CppModule) -> None:
    """Fake-quants (made on the CPU) go to the device the model's parameters are on."""
    devices = {t.device for _, t in _tensors(module, "named_parameters_r")}
    if len(devices) == 1:
        device = devices.pop()
        if device.type != "cpu":
            as_python(module).to(device)


def _trainable_parameters(module: CppModule) -> None:
    """Each parameter an ``nn.Parameter`` leaf, as ``torch.jit.script`` leaves them, for optimizers and ``.to()``."""
    for _, submodule in named_modules(module):
        for name, parameter in _tensors(submodule, "named_parameters"):
            if "." in name:
                continue  # a child's, visited with the child
            if not parameter.is_leaf or not isinstance(parameter, torch.nn.Parameter):
                submodule.setattr(name, torch.nn.Parameter(parameter.detach(), requires_grad=parameter.requires_grad))


def prepare_qat(model: Any, qconfig_dict: Any, inplace: bool = False) -> torch.jit.ScriptModule:
    """Prepare ``model`` (in training mode) for quantization-aware training; see the module docstring.

    ``qconfig_dict`` is a ``qconfig_dict`` or a ``QConfigMapping`` of QAT qconfigs.
    """
    check_script_module(model)
    if not model._c._has_method("forward"):
        raise ValueError(f"the script module {model.original_name} has no forward method to prepare")
    if not model.training:
        raise ValueError(
            "prepare_qat_jit needs a model in training mode (quantization-aware training trains it): "
            "call model.train() first"
        )
    check_qconfig_dict(qconfig_dict)
    scripted = script_qconfig_dict(qconfig_dict)
    check_qconfig_kind(scripted, QuantType.STATIC)
    check_qat_qconfigs(scripted)
    module = clone_module(as_cpp(model))
    module = prepare_qat_pipeline(scripted).run(module)
    register_attribute(module, PREPARED_MARK, True)
    if inplace:
        model._reconstruct(module)
        model.train()
        return model
    result = as_python(module)
    result.train()
    return result

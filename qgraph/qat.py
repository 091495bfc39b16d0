"""Switches for a model prepared for quantization-aware training (``qgraph.prepare_qat_jit``).

PyTorch's eager switches (``model.apply(torch.ao.quantization.disable_observer)``,
``model.apply(torch.ao.nn.intrinsic.qat.freeze_bn_stats)``) test the Python
class of each module, which a scripted model does not have for its
Conv-BatchNorm modules (and a user's scripted fake-quant class never
has). These work on the scripted model, and on one loaded back with
``torch.jit.load``:

    prepared = qgraph.prepare_qat_jit(model, {"": get_default_qat_qconfig("x86")})
    ... train a few epochs ...
    qgraph.qat.disable_observer(prepared)   # qparams fixed from here on
    qgraph.qat.freeze_bn_stats(prepared)    # BatchNorm uses its running statistics

Fake-quant modules are recognised by their ``observer_enabled`` and
``fake_quant_enabled`` buffers, which are changed in place (same tensors:
devices, ``DistributedDataParallel``'s buffer list and ``torch.jit.save``
keep working). Each function returns how many modules it switched and
raises ValueError for a model that has none to switch.
"""

from __future__ import annotations

from typing import Any

import torch

from qgraph.ir import CppModule, as_cpp, named_modules
from qgraph.prepare import check_script_module
from qgraph.quant.qat_modules import is_conv_bn_module, is_fake_quant

__all__ = [
    "enable_observer",
    "disable_observer",
    "enable_fake_quant",
    "disable_fake_quant",
    "freeze_bn_stats",
    "update_bn_stats",
]


def _modules(model: Any, wanted: Any, what: str) -> list[CppModule]:
    check_script_module(model)
    found = [module for _, module in named_modules(as_cpp(model)) if wanted(module)]
    if not found:
        raise ValueError(f"the model has no {what}: prepare it with qgraph.prepare_qat_jit first")
    return found


def _set_flag(model: Any, flag: str, value: bool) -> int:
    found = _modules(model, is_fake_quant, "fake-quant modules")
    for module in found:
        buffer = module.getattr(flag)
        assert isinstance(buffer, torch.Tensor)
        buffer.fill_(int(value))
    return len(found)


def enable_observer(model: Any) -> int:
    """Fake-quants update their statistics (and so their qparams) from the data again."""
    return _set_flag(model, "observer_enabled", True)


def disable_observer(model: Any) -> int:
    """Fake-quants keep the qparams they have."""
    return _set_flag(model, "observer_enabled", False)


def enable_fake_quant(model: Any) -> int:
    """Fake-quants round their inputs to the quantized grid (straight-through gradients)."""
    return _set_flag(model, "fake_quant_enabled", True)


def disable_fake_quant(model: Any) -> int:
    """Fake-quants pass their inputs through unchanged (observers still observe if enabled)."""
    return _set_flag(model, "fake_quant_enabled", False)


def _set_frozen(model: Any, frozen: bool) -> int:
    found = _modules(model, is_conv_bn_module, "QAT Conv-BatchNorm modules")
    for module in found:
        module.setattr("freeze_bn", frozen)
    return len(found)


def freeze_bn_stats(model: Any) -> int:
    """Conv-BatchNorm modules normalise with their running statistics and stop updating them, also in train()."""
    return _set_frozen(model, True)


def update_bn_stats(model: Any) -> int:
    """Conv-BatchNorm modules train with batch statistics and update their running ones again."""
    return _set_frozen(model, False)

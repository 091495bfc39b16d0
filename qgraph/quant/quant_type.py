"""The kind of quantization a caller asks for, read in one place.

Entry points that mirror PyTorch's lenient ones (prepare, convert,
``insert_observers``, ``insert_quant_dequant``) take a ``QuantType``, its
name (``"static"``, ``"dynamic"``, any case) or its number;
``parse_quant_type`` reads those. Passes that take the type as PyTorch's
C++ passes do (``finalize``, ``quant_fusion``, the float-op report) accept a
``QuantType`` only, checked by ``check_quant_type``.
"""

from __future__ import annotations

from typing import Any

from torch.ao.quantization.quant_type import QuantType

__all__ = ["QuantType", "parse_quant_type", "check_quant_type"]

_SUPPORTED = (QuantType.STATIC, QuantType.DYNAMIC)
_BY_NAME = {"static": QuantType.STATIC, "dynamic": QuantType.DYNAMIC}


def parse_quant_type(quant_type: Any) -> QuantType:
    """A ``QuantType`` from itself, from ``"static"`` / ``"dynamic"`` or from 0 / 1; ValueError otherwise."""
    if isinstance(quant_type, QuantType):
        return quant_type
    if isinstance(quant_type, str) and quant_type.lower() in _BY_NAME:
        return _BY_NAME[quant_type.lower()]
    if isinstance(quant_type, int) and not isinstance(quant_type, bool) and quant_type in (0, 1):
        return QuantType(quant_type)
    raise ValueError(
        f"quant_type must be QuantType.STATIC, QuantType.DYNAMIC, 'static' or 'dynamic', got {quant_type!r}"
    )


def check_quant_type(quant_type: Any) -> QuantType:
    """``quant_type`` itself when it is ``QuantType.STATIC`` or ``DYNAMIC``.

    TypeError for anything that is not a ``QuantType``; ValueError for the
    kinds qgraph does not lower (``QuantType.QAT``, ``WEIGHT_ONLY``).
    """
    if not isinstance(quant_type, QuantType):
        raise TypeError(f"quant_type must be a torch.ao.quantization.QuantType, got {quant_type!r}")
    if quant_type not in _SUPPORTED:
        raise ValueError(f"only QuantType.STATIC and QuantType.DYNAMIC are supported, got {quant_type}")
    return quant_type

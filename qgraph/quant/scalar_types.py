"""The numbers TorchScript stores for dtypes and qschemes.

A ``torch.dtype`` or ``torch.qscheme`` held by a scripted module (an
observer's ``dtype`` and ``qscheme``) reads back as the number of its c10
enum, and IR constants spell it so (``prim::Constant[value=13]`` is
``torch.quint8``). The numbers are asked of TorchScript itself, not written
down, so they cannot drift from the PyTorch in use.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from qgraph.ir import insert_constant, ivalue

__all__ = [
    "code_of",
    "dtype_of",
    "qscheme_of",
    "is_dtype",
    "is_per_channel",
    "FLOAT32",
    "QUINT8",
]

_DTYPES = (torch.qint8, torch.quint8, torch.qint32, torch.quint4x2, torch.float16, torch.float32)
_QSCHEMES = (
    torch.per_tensor_affine,
    torch.per_channel_affine,
    torch.per_tensor_symmetric,
    torch.per_channel_symmetric,
    torch.per_channel_affine_float_qparams,
)
# per_channel_affine_float_qparams is not among them, as in the reference.
_PER_CHANNEL = (torch.per_channel_affine, torch.per_channel_symmetric)


@functools.cache
def code_of(value: torch.dtype | torch.qscheme) -> int:
    """The number TorchScript stores for ``value``."""
    graph = torch._C.Graph()  # kept alive while its constant is read
    return ivalue(insert_constant(graph, value))


def _from_code(value: Any, choices: tuple) -> Any:
    if not isinstance(value, int) or isinstance(value, bool):
        return value
    return next((choice for choice in choices if code_of(choice) == value), None)


def dtype_of(value: Any) -> torch.dtype | None:
    """The ``torch.dtype`` of a dtype attribute or constant (a dtype or its number); None for an unknown number."""
    return _from_code(value, _DTYPES)


def qscheme_of(value: Any) -> torch.qscheme | None:
    """The ``torch.qscheme`` of a qscheme attribute (a qscheme or its number); None for an unknown number."""
    return _from_code(value, _QSCHEMES)


def is_dtype(value: Any, *dtypes: torch.dtype) -> bool:
    """Whether a dtype attribute or constant (a dtype or its number) is one of ``dtypes``."""
    return any(value == dtype or value == code_of(dtype) for dtype in dtypes)


def is_per_channel(qscheme: Any) -> bool:
    """Whether a qscheme attribute (a qscheme or its number) quantizes per channel."""
    return any(qscheme == scheme or qscheme == code_of(scheme) for scheme in _PER_CHANNEL)


FLOAT32 = code_of(torch.float32)
# The output dtype of PyTorch's quantized kernels and of fixed-qparams ops.
QUINT8 = code_of(torch.quint8)

"""The qparams of a calibrated observer, as the attributes quantize ops read.

A per-tensor observer gives ``(_scale, _zero_point, _scalar_type)`` (a
float, an int, the dtype's number), a per-channel one
``(_scale, _zero_point, _axis, _scalar_type)`` with tensor scale and zero
point; a ``PlaceholderObserver`` for run-time quantization gives only the
dtype, an fp16 observer nothing. An activation beyond
``QUANTIZABLE_RANGE`` under a ``HistogramObserver`` takes its whole
observed range instead of the histogram search.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from qgraph.ir import TENSOR, CppModule, Node
from qgraph.quant import observer_state
from qgraph.quant.observers import is_placeholder, observer_name
from qgraph.quant.scalar_types import is_dtype, is_per_channel

__all__ = ["observer_qparams", "qparam_type"]

_FLOAT = torch._C.FloatType.get()
_INT = torch._C.IntType.get()


def qparam_type(value: Any) -> Any:
    """The TorchScript type of a qparams attribute holding ``value``."""
    if isinstance(value, torch.Tensor):
        return TENSOR
    if isinstance(value, float):
        return _FLOAT
    return _INT


def observer_qparams(module: CppModule, observer: Node) -> tuple[bool, list[tuple[str, Any]]]:
    """(per-channel?, [(attribute suffix, value)]) in quantize-op argument order."""
    name = observer_name(observer.output())
    assert name is not None, "called on observer calls only"
    obs = module.getattr(name)
    dtype = obs.getattr("dtype")
    if is_placeholder(observer.inputsAt(0).type()):
        if obs.hasattr("is_dynamic") and obs.getattr("is_dynamic"):
            return False, [("_scalar_type", dtype)]
        return False, []
    if is_dtype(dtype, torch.float16):
        return False, []
    out_of_range = observer_state.observed_magnitude(obs) > observer_state.QUANTIZABLE_RANGE
    if out_of_range and observer_state.searches_histogram(obs):
        result = observer_state.whole_range_qparams(obs)
    else:
        with warnings.catch_warnings():
            # check_calibration has said it once for every observer that saw nothing.
            warnings.filterwarnings("ignore", message="must run observer before calling calculate_qparams")
            result = obs._get_method("calculate_qparams")()
    if not (isinstance(result, tuple) and len(result) == 2 and all(isinstance(t, torch.Tensor) for t in result)):
        raise RuntimeError(
            f"calculate_qparams of observer {observer_name(observer.output())!r} must return "
            f"a tuple of two tensors (scale, zero_point), got {result!r}"
        )
    scale = result[0].to(torch.float)
    zero_point = result[1].to(torch.int)
    qscheme = obs.getattr("qscheme")
    if is_per_channel(qscheme):
        return True, [
            ("_scale", scale),
            ("_zero_point", zero_point),
            ("_axis", obs.getattr("ch_axis")),
            ("_scalar_type", dtype),
        ]
    return False, [("_scale", scale.item()), ("_zero_point", zero_point.item()), ("_scalar_type", dtype)]

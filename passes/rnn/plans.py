"""What happens to each RNN instance: quantized to int8 or fp16, or left float and why; its packed weights.

Weights go through eager ``quantize_dynamic``'s steps, so outputs equal
eager's bit for bit: a fresh weight observer per weight,
``calculate_qparams``, quantize, ``linear_prepack`` (int8) or
``linear_prepack_fp16`` (fp16), then one cell-params object per layer and
direction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.ao.nn.quantized.modules.utils import _quantize_weight
from torch.ao.quantization.qconfig import default_dynamic_qconfig

from passes.rnn.table import FLOAT_REASON_ATTR, RNN_MODULE_CLASSES
from qgraph.ir import CppModule, is_instance_of, named_modules, resolve_path, set_attr
from qgraph.quant.observers import fresh_observer, observer_dtype
from qgraph.quant.qconfig import resolve_qconfigs

__all__ = ["Plan", "rnn_plans", "is_tagged_reason", "record_float", "prepack", "cell_params", "no_bias"]

nn = torch.nn
_SUPPORTED_DTYPES = (torch.qint8, torch.float16)
_NO_QCONFIG_REASON = "no qconfig applies to this module"


@dataclass
class Plan:
    """What happens to one RNN instance: quantized to ``dtype``, or float for ``reason``."""

    dtype: torch.dtype | None
    weight_observer: Any = None
    reason: str | None = None

    @property
    def mode(self) -> str:
        if self.dtype is not None:
            return str(self.dtype)
        # A float op is tagged with its reason, so instances sharing a graph must share the reason.
        return "float" if not is_tagged_reason(self.reason) else f"float: {self.reason}"


def is_tagged_reason(reason: str | None) -> bool:
    """Whether the RNN op left float for ``reason`` carries it as a tag (see the module docstring)."""
    return reason is not None and reason != _NO_QCONFIG_REASON


def _plan_for(module: CppModule, qconfig: Any) -> Plan:
    if is_instance_of(module, nn.RNN):
        return Plan(None, reason="nn.RNN has no dynamic quantized kernel (eager quantize_dynamic leaves it float)")
    if qconfig is None:
        return Plan(None, reason=_NO_QCONFIG_REASON)
    # Eager falls back to the default dynamic weight observer when the
    # qconfig has none; so does this pass.
    observer = qconfig.weight if qconfig.weight is not None else default_dynamic_qconfig.weight
    dtype = observer_dtype(observer)
    if dtype not in _SUPPORTED_DTYPES:
        return Plan(
            None,
            reason=f"weight observer dtype {dtype} is not supported by the dynamic RNN kernels "
            "(torch.qint8 or torch.float16)",
        )
    if is_instance_of(module, nn.LSTM) and module.hasattr("weight_hr_l0"):
        return Plan(None, reason="LSTM with proj_size > 0: the quantized LSTM kernels have no projection")
    return Plan(dtype, weight_observer=observer)


def _quantized_weight(weight: torch.Tensor, plan: Plan) -> torch.Tensor:
    """The weight as eager's dynamic RNN modules quantize it (int8) or keep it (fp16)."""
    if plan.dtype == torch.float16:
        return weight.float()
    observer = fresh_observer(plan.weight_observer)
    observer(weight)
    return _quantize_weight(weight.float(), observer)


def prepack(weight: torch.Tensor, bias: torch.Tensor | None, plan: Plan) -> Any:
    quantized = _quantized_weight(weight, plan)
    if plan.dtype == torch.float16:
        return torch.ops.quantized.linear_prepack_fp16(quantized, bias)
    return torch.ops.quantized.linear_prepack(quantized, bias)


def no_bias() -> torch.Tensor:
    # The CPU kernels add the bias inside the packed linear; the cell params'
    # own bias tensors are only carried along, so an empty one stands in.
    return torch.zeros(0)


def cell_params(
    w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor | None, b_hh: torch.Tensor | None, plan: Plan
) -> Any:
    packed_ih = prepack(w_ih, b_ih, plan)
    packed_hh = prepack(w_hh, b_hh, plan)
    if plan.dtype == torch.float16:
        return torch.ops.quantized.make_quantized_cell_params_fp16(packed_ih, packed_hh)
    b_ih = no_bias() if b_ih is None else b_ih
    b_hh = no_bias() if b_hh is None else b_hh
    # reduce_range=True: what eager's dynamic LSTM/GRU (module version 2) uses.
    return torch.ops.quantized.make_quantized_cell_params_dynamic(packed_ih, packed_hh, b_ih, b_hh, True)


def rnn_plans(root: CppModule, qconfig_dict: dict) -> dict[str, Plan]:
    """The plan of every RNN instance of ``root``, by dotted path."""
    qconfigs = resolve_qconfigs(root, qconfig_dict)
    return {
        path: _plan_for(module, qconfigs.get(path))
        for path, module in named_modules(root)
        if is_instance_of(module, *RNN_MODULE_CLASSES)
    }


def record_float(root: CppModule, path: str, reason: str) -> None:
    """Say on the instance at ``path`` why it stays float (``rnn_float_reasons`` reads it back)."""
    set_attr(resolve_path(root, path), FLOAT_REASON_ATTR, reason)

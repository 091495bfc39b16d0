"""What folding a BatchNorm into a conv computes: the BatchNorm's parameters and the folded weight and bias.

The same float operations, in the same order, as PyTorch's own folding, so
the results agree bit for bit::

    rsqrt = torch.rsqrt(running_var + eps)
    weight' = weight * (bn_weight * rsqrt).reshape(-1, 1, ...)
    bias' = (bias - running_mean) * rsqrt * bn_weight + bn_bias

Missing BatchNorm affine parameters count as ones and zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from qgraph.ir import CppModule, is_constant, ivalue, method_graph, walk

__all__ = ["BN_TRAINING", "BatchNormParameters", "batch_norm_parameters", "folded_weight_and_bias", "tensor_attr"]

# aten::batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn_enabled)
BN_WEIGHT, BN_BIAS, BN_TRAINING, BN_EPS = 1, 2, 5, 7

_UNREADABLE = object()


@dataclass
class BatchNormParameters:
    running_mean: torch.Tensor
    running_var: torch.Tensor
    eps: float
    weight: torch.Tensor
    bias: torch.Tensor


def batch_norm_parameters(bn: CppModule) -> BatchNormParameters | None:
    """What folding needs from an eval-mode BatchNorm, or None when it cannot be had.

    Attributes come first; a traced BatchNorm has no ``eps`` (and no
    ``weight``/``bias`` when not affine), so those are read from the
    constants its ``aten::batch_norm`` was traced with.
    """
    running_mean, running_var = tensor_attr(bn, "running_mean"), tensor_attr(bn, "running_var")
    if running_mean is None or running_var is None:
        return None
    if bn.hasattr("training") and bn.getattr("training"):
        return None
    calls = [n for n in walk(method_graph(bn)) if n.kind() == "aten::batch_norm"]
    if len(calls) > 1:
        return None
    traced = calls[0] if calls else None
    if traced is not None and not is_constant(traced.inputsAt(BN_TRAINING), False):
        return None

    def read(name: str, offset: int) -> Any:
        if bn.hasattr(name):
            return bn.getattr(name)
        if traced is None or not is_constant(traced.inputsAt(offset)):
            return _UNREADABLE
        return ivalue(traced.inputsAt(offset))

    eps, weight, bias = read("eps", BN_EPS), read("weight", BN_WEIGHT), read("bias", BN_BIAS)
    if any(v is _UNREADABLE for v in (eps, weight, bias)):
        return None
    if isinstance(eps, bool) or not isinstance(eps, int | float):
        return None
    return BatchNormParameters(
        running_mean=running_mean,
        running_var=running_var,
        eps=float(eps),
        weight=weight if isinstance(weight, torch.Tensor) else torch.ones_like(running_mean),
        bias=bias if isinstance(bias, torch.Tensor) else torch.zeros_like(running_mean),
    )


def folded_weight_and_bias(
    conv_weight: torch.Tensor, conv_bias: torch.Tensor | None, bn: BatchNormParameters
) -> tuple[torch.Tensor, torch.Tensor]:
    """The conv weight and bias that absorb ``bn``, computed as PyTorch's folding does."""
    with torch.no_grad():
        bias = conv_bias if conv_bias is not None else torch.zeros_like(bn.running_mean)
        var_rsqrt = torch.rsqrt(bn.running_var + bn.eps)
        shape = [-1] + [1] * (conv_weight.dim() - 1)
        weight = conv_weight * (bn.weight * var_rsqrt).reshape(shape)
        bias = (bias - bn.running_mean) * var_rsqrt * bn.weight + bn.bias
    # Leaves, trainable as the tensors they replace, with no autograd history
    # keeping the old weights alive.
    return weight.requires_grad_(conv_weight.requires_grad), bias.requires_grad_(conv_weight.requires_grad)


def tensor_attr(module: CppModule, name: str) -> torch.Tensor | None:
    value = module.getattr(name) if module.hasattr(name) else None
    return value if isinstance(value, torch.Tensor) else None

"""Quantization-aware training: the Conv-BatchNorm module that trains, and what tells QAT models apart.

``ConvBn{1,2,3}d`` compute what PyTorch's eager QAT modules
``torch.ao.nn.intrinsic.qat.ConvBn{1,2,3}d`` compute, operation for
operation (their ``_forward_approximate``): the conv weight is scaled by
``gamma / sqrt(running_var + eps)`` and fake-quantized, the convolution's
output divided back and normalised by the BatchNorm, with batch statistics
while training. The order of the float operations is part of the contract:
computing the scale another way changes it by an ulp, which the fake-quant
rounding turns into whole quantization steps within a few training steps.

Unlike the eager modules they are scriptable and keep their BatchNorm state
in a ``bn`` child (eager's state-dict layout: ``weight``, ``bias``,
``bn.*``, ``weight_fake_quant.*``). A scripted module cannot override
``train()``, so a frozen BatchNorm is a ``freeze_bn`` flag read in
``forward``, not a child left in eval mode.

After convert has folded the BatchNorm into ``weight`` and ``bias``,
``folded_forward`` is the plain conv with its weight fake-quantized: the
shape observer insertion gives a conv in a post-training model.
"""

# Without postponed annotations: TorchScript reads the class annotations below as types.
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from qgraph.ir import CppModule, as_python, class_name_of

__all__ = [
    "ConvBn1d",
    "ConvBn2d",
    "ConvBn3d",
    "FOLDED_FORWARD",
    "WEIGHT_FAKE_QUANT",
    "build_conv_bn",
    "is_conv_bn_type",
    "is_conv_bn_module",
    "is_fake_quant",
]

FOLDED_FORWARD = "folded_forward"
WEIGHT_FAKE_QUANT = "weight_fake_quant"


class _ConvBnNd(nn.Module):
    __constants__ = ["stride", "padding", "dilation", "groups", "padding_mode", "out_channels", "reversed_padding"]
    bias: Optional[torch.Tensor]
    freeze_bn: bool

    def __init__(self, conv: Any, bn: Any, weight_fake_quant: Any, freeze_bn: bool = False):
        super().__init__()
        self.stride = list(conv.stride)
        self.padding = list(conv.padding)
        self.dilation = list(conv.dilation)
        self.groups = int(conv.groups)
        self.padding_mode = str(conv.padding_mode)
        self.out_channels = int(conv.weight.shape[0])
        self.reversed_padding = [p for p in reversed(self.padding) for _ in range(2)]
        # The conv's and BatchNorm's own tensors (same storage), as eager's from_float takes them.
        self.weight = nn.Parameter(conv.weight.detach(), requires_grad=conv.weight.requires_grad)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach())
        norm = type(self)._BATCH_NORM(bn.num_features, eps=bn.eps, momentum=bn.momentum)
        norm.weight = nn.Parameter(bn.weight.detach())
        norm.bias = nn.Parameter(bn.bias.detach())
        norm.running_mean = bn.running_mean
        norm.running_var = bn.running_var
        norm.num_batches_tracked = bn.num_batches_tracked
        self.bn = norm
        self.weight_fake_quant = weight_fake_quant
        self.freeze_bn = freeze_bn

    _BATCH_NORM: Any = nn.BatchNorm2d

    def _conv(self, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def _batch_norm(self, x: torch.Tensor) -> torch.Tensor:
        # nn.BatchNorm's forward, with "training" meaning "training and not frozen".
        bn_training = self.training and not self.freeze_bn
        factor = 0.0
        momentum = self.bn.momentum
        if momentum is not None:
            factor = momentum
        if bn_training and self.bn.track_running_stats:
            tracked = self.bn.num_batches_tracked
            if tracked is not None:
                tracked.add_(1)
                if momentum is None:
                    factor = 1.0 / float(tracked)
        return F.batch_norm(
            x,
            self.bn.running_mean,
            self.bn.running_var,
            self.bn.weight,
            self.bn.bias,
            bn_training,
            factor,
            self.bn.eps,
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        running_var = self.bn.running_var
        assert running_var is not None
        running_std = torch.sqrt(running_var + self.bn.eps)
        scale_factor = self.bn.weight / running_std
        weight_shape = [1] * self.weight.dim()
        weight_shape[0] = -1
        bias_shape = [1] * self.weight.dim()
        bias_shape[1] = -1
        scaled_weight = self.weight_fake_quant(self.weight * scale_factor.reshape(weight_shape))
        bias = self.bias
        if bias is not None:
            zero_bias = torch.zeros_like(bias, dtype=input.dtype)
        else:
            zero_bias = torch.zeros(self.out_channels, device=scaled_weight.device, dtype=input.dtype)
        conv = self._conv(input, scaled_weight, zero_bias)
        conv_orig = conv / scale_factor.reshape(bias_shape)
        if bias is not None:
            conv_orig = conv_orig + bias.reshape(bias_shape)
        return self._batch_norm(conv_orig)

    @torch.jit.export
    def folded_forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._conv(input, self.weight_fake_quant(self.weight), self.bias)

    @torch.jit.export
    def freeze_bn_stats(self) -> None:
        self.freeze_bn = True

    @torch.jit.export
    def update_bn_stats(self) -> None:
        self.freeze_bn = False


class ConvBn1d(_ConvBnNd):
    _BATCH_NORM = nn.BatchNorm1d

    def _conv(self, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        if self.padding_mode != "zeros":
            padded = F.pad(input, self.reversed_padding, mode=self.padding_mode)
            return F.conv1d(padded, weight, bias, self.stride, [0], self.dilation, self.groups)
        return F.conv1d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class ConvBn2d(_ConvBnNd):
    _BATCH_NORM = nn.BatchNorm2d

    def _conv(self, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        if self.padding_mode != "zeros":
            padded = F.pad(input, self.reversed_padding, mode=self.padding_mode)
            return F.conv2d(padded, weight, bias, self.stride, [0, 0], self.dilation, self.groups)
        return F.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class ConvBn3d(_ConvBnNd):
    _BATCH_NORM = nn.BatchNorm3d

    def _conv(self, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        if self.padding_mode != "zeros":
            padded = F.pad(input, self.reversed_padding, mode=self.padding_mode)
            return F.conv3d(padded, weight, bias, self.stride, [0, 0, 0], self.dilation, self.groups)
        return F.conv3d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


_BY_DIMENSION = {1: ConvBn1d, 2: ConvBn2d, 3: ConvBn3d}
# Identified by the full name of the Python class they were scripted from,
# which survives torch.jit.save / load; a user's class of the same short name does not match.
_CLASS_NAMES = frozenset(f"{cls.__module__}.{cls.__qualname__}" for cls in _BY_DIMENSION.values())


def build_conv_bn(conv: Any, bn: Any, weight_fake_quant: CppModule, freeze_bn: bool = False) -> CppModule:
    """A scripted ``ConvBn{n}d`` over the tensors of ``conv`` and ``bn``.

    ``conv`` and ``bn`` are read through their Python attributes (``stride``,
    ``padding``, ... and ``eps``, ``momentum``, ...): eager modules, scripted
    ones, or plain namespaces holding those values.
    """
    module = _BY_DIMENSION[conv.weight.dim() - 2](conv, bn, as_python(weight_fake_quant))
    module.freeze_bn = freeze_bn
    return torch.jit.script(module)._c


def is_conv_bn_type(class_type: Any) -> bool:
    """Whether a TorchScript type is one of the ``ConvBn{n}d`` classes above."""
    return class_type.kind() == "ClassType" and class_name_of(class_type) in _CLASS_NAMES


def is_conv_bn_module(module: Any) -> bool:
    return isinstance(module, CppModule) and is_conv_bn_type(module._type())


def is_fake_quant(module: CppModule) -> bool:
    """A fake-quantize module: PyTorch's ``FakeQuantize`` family, or any with the same switches.

    Recognised by its ``fake_quant_enabled`` and ``observer_enabled``
    buffers, so a user's scriptable fake-quant class counts too.
    """
    return module.hasattr("fake_quant_enabled") and module.hasattr("observer_enabled")

"""PyTorch kernel bugs that decide what must not run quantized (measured on torch 2.13.0, fbgemm).

fbgemm's groupwise convolution kernel, which ``quantized::conv2d`` /
``conv3d`` (and their ``_relu`` forms) take for 3x3(x3) kernels, padding 1,
dilation 1, stride 1 or 2 and equal input and output channels per group,
overruns the heap for 2 or 4 channels per group when the channel count is
above 8 and not a multiple of 8 ("free(): invalid next size", SIGSEGV,
outputs that change from run to run). Such convs are kept in float.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["groupwise_conv_is_unsafe", "groupwise_conv_reason"]


def groupwise_conv_is_unsafe(
    weight_shape: Iterable[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    transposed: bool,
) -> bool:
    """Whether a quantized conv with these parameters takes fbgemm's broken groupwise path.

    ``weight_shape`` is the (out channels, in channels per group, *kernel)
    shape of the quantized weight. The groupwise kernel runs for 2-D/3-D
    convs with equal input and output channels per group in {2, 4, 8, 16},
    3-wide kernels, padding 1, dilation 1, and stride 1 or 2; it corrupts
    memory for 2 or 4 channels per group when the channel count is above 8
    and not a multiple of 8.
    """
    out_channels, in_per_group, *kernel = (int(s) for s in weight_shape)
    if transposed or groups < 2 or len(kernel) not in (2, 3):
        return False
    channels = in_per_group * groups
    return (
        out_channels == channels
        and in_per_group in (2, 4)
        and channels > 8
        and channels % 8 != 0
        and all(k == 3 for k in kernel)
        and all(p == 1 for p in padding)
        and all(d == 1 for d in dilation)
        # fbgemm reads only the spatial (last two) strides; all 1 or all 2.
        and (all(s == 1 for s in list(stride)[-2:]) or all(s == 2 for s in list(stride)[-2:]))
    )


def groupwise_conv_reason(weight_shape: Sequence[int]) -> str:
    """Why a conv that ``groupwise_conv_is_unsafe`` flags runs in float, in a sentence."""
    out_channels, in_per_group = (int(s) for s in list(weight_shape)[:2])
    return (
        f"quantized grouped conv with {in_per_group} channels per group and {out_channels} channels "
        "(above 8, not a multiple of 8) overruns the heap in fbgemm's groupwise kernel; "
        "runs as dequantize -> float conv -> quantize_per_tensor"
    )

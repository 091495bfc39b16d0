"""Whether PyTorch's oneDNN int8 ops exist in this build and compute exactly on this CPU.

The lowering emits ``onednn::qconv_prepack``, ``onednn::qconv2d_pointwise``
(and ``.binary``), ``onednn::qlinear_prepack`` and
``onednn::qlinear_pointwise`` (and ``.binary``); a build without one of
them cannot run the lowered model. A CPU without the VNNI (or AMX)
instructions has oneDNN multiply uint8 by int8 with 16-bit intermediate
sums, which saturate: full-range 8-bit activations then give wrong results
without any error. ``check_onednn`` runs a one-channel conv and linear whose
exact result needs more than 16 bits and refuses the lowering when the
result is not exact, so no model is lowered to ops that would compute it
wrongly. The check runs once per process.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["OnednnUnavailableError", "check_onednn", "REQUIRED_OPS"]

REQUIRED_OPS = (
    "onednn::qconv_prepack",
    "onednn::qconv2d_pointwise",
    "onednn::qlinear_prepack",
    "onednn::qlinear_pointwise",
)
# 64 products of 255 * 127: any pair summed in 16 bits (at most 32767) saturates.
_CHANNELS = 64


class OnednnUnavailableError(RuntimeError):
    """``lowering="onednn"`` cannot run here: an op is missing, or the CPU cannot compute it exactly."""


def _exact_products() -> tuple[float, float]:
    x = torch.full((1, _CHANNELS, 1, 1), 255, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    w = torch.full((1, _CHANNELS, 1, 1), 127, dtype=torch.int8)
    one = torch.ones(1)
    zero = torch.zeros(1, dtype=torch.long)
    packed = torch.ops.onednn.qconv_prepack(w, one, 1.0, 0, [1, 1], [0, 0], [1, 1], 1, [1, _CHANNELS, 1, 1])
    conv = torch.ops.onednn.qconv2d_pointwise(
        x, 1.0, 0, packed, one, zero, None, [1, 1], [0, 0], [1, 1], 1, 1.0, 0, torch.float32, "none", [], ""
    )
    packed = torch.ops.onednn.qlinear_prepack(w.reshape(1, _CHANNELS), [1, _CHANNELS])
    linear = torch.ops.onednn.qlinear_pointwise(
        x.reshape(1, _CHANNELS), 1.0, 0, packed, one, zero, None, 1.0, 0, torch.float32, "none", [], "none"
    )
    return float(conv.flatten()[0]), float(linear.flatten()[0])


@functools.lru_cache(maxsize=1)
def _problem() -> str | None:
    for name in REQUIRED_OPS:
        if not torch._C._jit_get_schemas_for_operator(name):
            return f"this PyTorch build has no {name} (lowering='onednn' needs PyTorch's oneDNN int8 ops)"
    expected = float(_CHANNELS * 255 * 127)
    try:
        conv, linear = _exact_products()
    except RuntimeError as err:
        return f"PyTorch's oneDNN int8 ops do not run on this CPU: {str(err).splitlines()[0]}"
    if conv != expected or linear != expected:
        return (
            "this CPU has no VNNI or AMX int8 instructions, so oneDNN's uint8 x int8 products saturate "
            f"(a test conv gave {conv:.0f} and a test linear {linear:.0f} instead of {expected:.0f}); "
            "use the default lowering"
        )
    return None


def check_onednn() -> None:
    """Raise ``OnednnUnavailableError`` unless the oneDNN int8 ops exist and compute exactly here."""
    problem = _problem()
    if problem is not None:
        raise OnednnUnavailableError(f"lowering='onednn' is unavailable: {problem}")

"""Ops that read quantized tensors directly, lowered to plain integer code that gives the same integers.

Takes the normalized graph, where such an op is a reshape-like op (which
runs on a uint8 tensor as it is, ``qparams.SHAPE_OPS``) or one of these:

- ``aten::max_pool2d`` on a quint8 tensor (other dtypes, dilations and
  ceil mode pool the dequantized tensor, which is exact): aten's max pooling on a
  channels-last uint8 tensor raises once ``H * W > 255`` (it indexes with
  the element type), so it becomes a separable max of strided views, padded
  with 0 (the smallest uint8, which a max never picks over a real value)::

      %p = aten::constant_pad_nd(%x_q, [1, 1, 1, 1], 0)
      %rows = aten::maximum(aten::maximum(%p[:, :, 0:-2:2], %p[:, :, 1:-1:2]), %p[:, :, 2::2])
      %y_q = <the same over dim 3 of %rows>

- ``aten::relu`` on a quantized tensor clamps at its zero point: on
  integers that is ``aten::clamp(%x_q, zero_point)``, or nothing when the
  zero point is the dtype's minimum;
- torchvision's channel shuffle (``reshape -> transpose(1, 2) ->
  contiguous -> reshape``) on a quantized tensor becomes
  ``aten::native_channel_shuffle``, which keeps the channels-last layout
  the oneDNN convs want instead of copying to a contiguous one.

A dequantize followed directly by a quantize becomes an integer
requantization (nothing when the parameters agree).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from passes.lower_onednn.context import Lowering
from passes.lower_onednn.qparams import QUINT8, QParams
from qgraph.ir.graph import Graph, Node, Value
from qgraph.pattern import Match, Rewrite

__all__ = ["integer_op_rewrites"]

_CHANNEL_SHUFFLE = """graph(%x_q, %groups, %one, %two, %memory_format):
    %size = aten::size(%x_q)
    %n, %c, %h, %w = prim::ListUnpack(%size)
    %per_group = aten::floordiv(%c, %groups)
    %grouped_shape = prim::ListConstruct(%n, %groups, %per_group, %h, %w)
    %grouped = aten::reshape(%x_q, %grouped_shape)
    %swapped = aten::transpose(%grouped, %one, %two)
    %packed = aten::contiguous(%swapped, %memory_format)
    %shape = prim::ListConstruct(%n, %c, %h, %w)
    %out = aten::reshape(%packed, %shape)
    return (%out)"""


def _quantized(lowering: Lowering, name: str, dtype: int | None = None) -> Callable[[Match], bool]:
    def check(match: Match) -> bool:
        params = lowering.params(match[name])
        return params is not None and (dtype is None or params.dtype == dtype)

    return check


def _shuffle_dims(match: Match) -> bool:
    return match.constant("one", None) == 1 and match.constant("two", None) == 2


def _channel_shuffle(lowering: Lowering, graph: Graph, match: Match, before: Node) -> list[Value]:
    e = lowering.emitter(before, source=match.node("swapped"))
    out = e.op("aten::native_channel_shuffle", match["x_q"], match["groups"])
    lowering.values.set(out, lowering.known(match["x_q"]))
    return [out]


def _pooling_is_separable(match: Match) -> bool:
    kernel, stride, padding, dilation = (match.constant(n, None) for n in ("kernel", "stride", "padding", "dilation"))
    if match.constant("ceil_mode", None) is not False:
        return False
    if not all(isinstance(v, list) and v and all(isinstance(i, int) for i in v) for v in (kernel, padding, dilation)):
        return False
    if not isinstance(stride, list) or not all(isinstance(i, int) for i in stride):
        return False
    return len(kernel) <= 2 and all(d == 1 for d in dilation)


def _pair(values: list[int], default: list[int]) -> list[int]:
    if not values:
        return default
    return values * 2 if len(values) == 1 else values


def _max_pool(lowering: Lowering, graph: Graph, match: Match, before: Node) -> list[Value]:
    e = lowering.emitter(before, source=match.anchor)
    x = match["x_q"]
    params = lowering.known(x)
    if params.dtype != QUINT8 or not _pooling_is_separable(match):
        # Max pooling picks values, so pooling the dequantized tensor and quantizing back is exact.
        arguments = [match[n] for n in ("kernel", "stride", "padding", "dilation", "ceil_mode")]
        pooled = e.op("aten::max_pool2d", e.dequantize(x, params), *arguments)
        out = e.quantize(pooled, params)
        lowering.values.set(out, params)
        return [out]
    kernel = _pair(match.constant("kernel"), [1, 1])
    stride = _pair(match.constant("stride"), kernel)
    padding = _pair(match.constant("padding"), [0, 0])
    if any(padding):
        x = e.op("aten::constant_pad_nd", x, [padding[1], padding[1], padding[0], padding[0]], 0)
    for dim, size, step in ((2, kernel[0], stride[0]), (3, kernel[1], stride[1])):
        # Window offset i covers positions i, i + step, ..., ending size - 1 - i before the end.
        views = [e.op("aten::slice", x, dim, i, -(size - 1 - i) if i < size - 1 else None, step) for i in range(size)]
        x = views[0]
        for view in views[1:]:
            x = e.op("aten::maximum", x, view)
    lowering.values.set(x, lowering.known(match["x_q"]))
    return [x]


def _relu(lowering: Lowering, in_place: bool, graph: Graph, match: Match, before: Node) -> list[Value]:
    params = lowering.known(match["x_q"])
    if params.zero_point <= params.bounds[0]:
        return [match["x_q"]]
    e = lowering.emitter(before, source=match.anchor)
    out = e.op("aten::clamp_" if in_place else "aten::clamp", match["x_q"], params.zero_point, None)
    lowering.values.set(out, params)
    return [out]


def _requantize(lowering: Lowering, graph: Graph, match: Match, before: Node) -> list[Value]:
    source = lowering.known(match["x_q"])
    target = QParams(match.constant("scale"), match.constant("zero_point"), match.constant("dtype"))
    out = lowering.emitter(before, source=match.anchor).requantize(match["x_q"], source, target)
    lowering.values.set(out, target)
    return [out]


def _static_target(match: Match) -> bool:
    return (
        isinstance(match.constant("scale", None), float)
        and isinstance(match.constant("zero_point", None), int)
        and match.constant("dtype", None) in (12, 13)
    )


def integer_op_rewrites(lowering: Lowering) -> tuple[Rewrite, ...]:
    bound = functools.partial
    return (
        Rewrite(
            name="channel_shuffle",
            pattern=_CHANNEL_SHUFFLE,
            replacement=bound(_channel_shuffle, lowering),
            filters=(_quantized(lowering, "x_q"), _shuffle_dims),
        ),
        Rewrite(
            name="max_pool2d",
            pattern="""graph(%x_q, %kernel, %stride, %padding, %dilation, %ceil_mode):
                %y = aten::max_pool2d(%x_q, %kernel, %stride, %padding, %dilation, %ceil_mode)
                return (%y)""",
            replacement=bound(_max_pool, lowering),
            filters=(_quantized(lowering, "x_q"),),
        ),
        *(
            Rewrite(
                name=kind.split("::")[1],
                pattern=f"""graph(%x_q):
                    %y = {kind}(%x_q)
                    return (%y)""",
                replacement=bound(_relu, lowering, kind.endswith("_")),
                filters=(_quantized(lowering, "x_q"),),
            )
            for kind in ("aten::relu", "aten::relu_")
        ),
        Rewrite(
            name="requantize",
            pattern="""graph(%x_q, %scale, %zero_point, %dtype):
                %x = aten::dequantize(%x_q)
                %y_q = aten::quantize_per_tensor(%x, %scale, %zero_point, %dtype)
                return (%y_q)""",
            replacement=bound(_requantize, lowering),
            filters=(_quantized(lowering, "x_q"), _static_target),
        ),
    )

"""Move activations and residual adds into the conv or linear that produces their input (float IR).

Takes the normalized quantize/dequantize graph. The reference quantizes a
conv's output before the activation or add that follows it, and quantizes
again after; a oneDNN post-op computes them on the conv's accumulator
instead, so the quantize/dequantize pair in between goes::

    %q = aten::quantize_per_tensor(%conv_out, 0.02, 0, 13)      %a = aten::hardswish(%conv_out)
    %d = aten::dequantize(%q)                           ->       %q = aten::quantize_per_tensor(%a, 0.02, 0, 13)
    %a = aten::hardswish_(%d)                                    %d = aten::dequantize(%q)

The quantization moves after the activation with the same parameters, so an
activation whose output nobody observed (a SiLU feeding a squeeze-excitation
block) gets quantized values its consumers can read as integers; one that
was requantized right away is left with a single quantization by the second
rule::

    %q1 = aten::quantize_per_tensor(%a, 0.02, 0, 13)
    %d = aten::dequantize(%q1)                          ->       %q2 = aten::quantize_per_tensor(%a, 0.05, 3, 13)
    %q2 = aten::quantize_per_tensor(%d, 0.05, 3, 13)

A relu on a quantized tensor (the reference quantizes an add's output
before a relu that the add's pattern did not take) is the quantization of
the relu of the float, and becomes so.

A residual add of a quantized value to a conv's (or linear's) output reads
the float output directly, so the two become one oneDNN op with a ``sum``
post-op later::

    %q = aten::quantize_per_tensor(%conv_out, ...)
    %d = aten::dequantize(%q)                           ->       %r = aten::add(%conv_out, %other, %alpha)
    %r = aten::add(%d, %other, %alpha)

Only activations the producing op can run as a post-op move
(``postops.activations_for``), and only into a producer with none yet.

A clamp (relu, relu6, hardtanh, clamp) moved next to its conv lets through
only part of the range observed before it, so its quantization takes that
part alone: a relu after a conv whose observed range is ``[-3, 5]`` is
quantized over ``[0, 5]`` (zero point 0, a finer scale); consumers read the
parameters from the graph, so they follow.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from passes.lower_onednn.postops import ACTIVATIONS, Activation
from passes.lower_onednn.qparams import QUINT8, QParams
from qgraph.ir import NodeIndex, insert_op
from qgraph.ir.graph import Graph, Node, Value
from qgraph.pattern import Match, Rewrite, rewrite

__all__ = ["EPILOGUE_REWRITES", "absorb_epilogues"]

_FUSING_PRODUCERS = ("aten::conv2d", "aten::linear")


def _activation_rewrite(activation: Activation, kind: str) -> Rewrite:
    arguments = "".join(f", %{name}" for name in activation.arguments)
    return Rewrite(
        name=f"absorb_{kind.split('::')[1]}",
        pattern=f"""graph(%y, %scale, %zero_point, %dtype{arguments}):
            %q = aten::quantize_per_tensor(%y, %scale, %zero_point, %dtype)
            %d = aten::dequantize(%q)
            %a = {kind}(%d{arguments})
            return (%a)""",
        replacement=f"""graph(%y, %scale, %zero_point, %dtype{arguments}):
            %a = {activation.kinds[0]}(%y{arguments})
            %q = aten::quantize_per_tensor(%a, %scale, %zero_point, %dtype)
            %d = aten::dequantize(%q)
            return (%d)""",
        filters=(_produced_by_fusing_op(activation), activation.is_static),
    )


def _produced_by_fusing_op(activation: Activation) -> Callable[[Match], bool]:
    def check(match: Match) -> bool:
        producer = match["y"].node()
        if producer.kind() == "aten::add" and activation.name == "relu":
            producer = producer.inputsAt(0).node()  # a residual sum, which takes a relu after it
        kind = producer.kind()
        return kind == "aten::linear" or (kind == "aten::conv2d" and not activation.linear_only)

    return check


def _residual_rewrite(kind: str, conv_first: bool) -> Rewrite:
    operands = "%d, %other" if conv_first else "%other, %d"
    return Rewrite(
        name=f"absorb_{kind.split('::')[1]}_{'left' if conv_first else 'right'}",
        pattern=f"""graph(%y, %scale, %zero_point, %dtype, %other, %alpha):
            %q = aten::quantize_per_tensor(%y, %scale, %zero_point, %dtype)
            %d = aten::dequantize(%q)
            %r = {kind}({operands}, %alpha)
            return (%r)""",
        replacement="""graph(%y, %scale, %zero_point, %dtype, %other, %alpha):
            %r = aten::add(%y, %other, %alpha)
            return (%r)""",
        filters=(_residual_operands,),
    )


def _residual_operands(match: Match) -> bool:
    return (
        match["y"].node().kind() in _FUSING_PRODUCERS
        and match["other"].node().kind() == "aten::dequantize"
        and match.constant("alpha", None) == 1
    )


COLLAPSE_REQUANTIZATION = Rewrite(
    name="collapse_requantization",
    pattern="""graph(%y, %s1, %z1, %t1, %s2, %z2, %t2):
        %q1 = aten::quantize_per_tensor(%y, %s1, %z1, %t1)
        %d = aten::dequantize(%q1)
        %q2 = aten::quantize_per_tensor(%d, %s2, %z2, %t2)
        return (%q2)""",
    replacement="""graph(%y, %s1, %z1, %t1, %s2, %z2, %t2):
        %q2 = aten::quantize_per_tensor(%y, %s2, %z2, %t2)
        return (%q2)""",
)


def _tightened(match: Match, activation: Activation) -> QParams | None:
    """Output parameters covering only what the clamp lets through, when narrower than the observed range."""
    scale, zero_point, dtype = (match.constant(n, None) for n in ("scale", "zero_point", "dtype"))
    if not isinstance(scale, float) or not isinstance(zero_point, int) or dtype != QUINT8:
        return None
    observed = QParams(scale, zero_point, dtype)
    low, high = activation.bounds(match) or (-math.inf, math.inf)
    q_low, q_high = observed.bounds
    real_low = min(max(observed.dequantize(q_low), low), 0.0)
    real_high = max(min(observed.dequantize(q_high), high), 0.0)
    tight_scale = (real_high - real_low) / (q_high - q_low)
    if not 0.0 < tight_scale < scale * (1 - 1e-6):
        return None
    tight_zero_point = int(min(q_high, max(q_low, q_low - round(real_low / tight_scale))))
    return QParams(tight_scale, tight_zero_point, dtype)


def _tighten_rewrite(activation: Activation, kind: str) -> Rewrite:
    arguments = "".join(f", %{name}" for name in activation.arguments)

    def build(graph: Graph, match: Match, before: Node) -> list[Value]:
        params = _tightened(match, activation)
        assert params is not None  # the filter checked it
        inputs = [match["y"], *(match[name] for name in activation.arguments)]
        clamped = insert_op(graph, kind, inputs, before=before).output()
        quantize = insert_op(
            graph, "aten::quantize_per_tensor", [clamped, params.scale, params.zero_point, params.dtype], before=before
        )
        return [quantize.output()]

    return Rewrite(
        name=f"tighten_{kind.split('::')[1]}",
        pattern=f"""graph(%y, %scale, %zero_point, %dtype{arguments}):
            %a = {kind}(%y{arguments})
            %q = aten::quantize_per_tensor(%a, %scale, %zero_point, %dtype)
            return (%q)""",
        replacement=build,
        filters=(
            _produced_by_fusing_op(activation),
            activation.is_static,
            lambda match: _tightened(match, activation) is not None,
        ),
    )


def _relu_before_quantize(kind: str) -> Rewrite:
    # A relu on a quantized tensor clamps at the zero point, which is what
    # quantizing the relu of the float gives: the relu joins the float island.
    return Rewrite(
        name=f"float_{kind.split('::')[1]}",
        pattern=f"""graph(%y, %scale, %zero_point, %dtype):
            %q = aten::quantize_per_tensor(%y, %scale, %zero_point, %dtype)
            %r = {kind}(%q)
            return (%r)""",
        replacement="""graph(%y, %scale, %zero_point, %dtype):
            %a = aten::relu(%y)
            %r = aten::quantize_per_tensor(%a, %scale, %zero_point, %dtype)
            return (%r)""",
    )


# Residual adds first: an activation moved into a conv would keep the add out of it. A clamp's output
# then gets parameters for the range it can have, finer than the observed range of its input.
EPILOGUE_REWRITES = (
    *(_relu_before_quantize(kind) for kind in ("aten::relu", "aten::relu_")),
    *(_residual_rewrite(kind, first) for kind in ("aten::add", "aten::add_") for first in (True, False)),
    *(_activation_rewrite(activation, kind) for activation in ACTIVATIONS for kind in activation.kinds),
    COLLAPSE_REQUANTIZATION,
    *(_tighten_rewrite(a, kind) for a in ACTIVATIONS if a.bounds_known for kind in a.kinds),
)


def absorb_epilogues(graph: Graph) -> int:
    """Apply ``EPILOGUE_REWRITES`` to ``graph`` in place; the number of rewrites made."""
    return rewrite(graph, EPILOGUE_REWRITES, NodeIndex(graph))

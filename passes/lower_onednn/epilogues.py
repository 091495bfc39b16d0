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

A residual add of a quantized value to a conv's (or linear's) output reads
the float output directly, so the two become one oneDNN op with a ``sum``
post-op later::

    %q = aten::quantize_per_tensor(%conv_out, ...)
    %d = aten::dequantize(%q)                           ->       %r = aten::add(%conv_out, %other, %alpha)
    %r = aten::add(%d, %other, %alpha)

Only activations the producing op can run as a post-op move
(``postops.activations_for``), and only into a producer with none yet.
"""

from __future__ import annotations

from passes.lower_onednn.postops import ACTIVATIONS, Activation
from qgraph.ir import NodeIndex
from qgraph.ir.graph import Graph
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


def _produced_by_fusing_op(activation: Activation):
    def check(match: Match) -> bool:
        kind = match["y"].node().kind()
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

# Residual adds first: an activation moved into a conv would keep the add out of it.
EPILOGUE_REWRITES = (
    *(_residual_rewrite(kind, first) for kind in ("aten::add", "aten::add_") for first in (True, False)),
    *(_activation_rewrite(activation, kind) for activation in ACTIVATIONS for kind in activation.kinds),
    COLLAPSE_REQUANTIZATION,
)


def absorb_epilogues(graph: Graph) -> int:
    """Apply ``EPILOGUE_REWRITES`` to ``graph`` in place; the number of rewrites made."""
    return rewrite(graph, EPILOGUE_REWRITES, NodeIndex(graph))

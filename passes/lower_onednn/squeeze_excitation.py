"""Squeeze-excitation products on plain integer tensors: a feature map scaled by a per-channel gate.

Takes islands ``dequantize(%x_q) -> mul(%x, %gate) -> quantize`` of the
normalized graph, where the gate comes from a globally pooled map (through
1x1 convs and element-wise activations) and the feature map from a conv,
and leaves a depthwise 1x1 oneDNN conv whose int8 weights are all 127 and
whose per-channel weight scales are ``gate / 127``, passed at run time. A
gate of another shape than ``[1, C, 1, 1]`` (checked at run time)
multiplies the dequantized tensor instead::

    %y_q = prim::If(aten::eq(aten::size(%gate), [1, C, 1, 1]))
      block0():
        -> (onednn::qconv2d_pointwise(%x_q, 0.02, 3, %packed_127s, aten::mul(aten::reshape(%gate, [-1]), 1/127),
                                      %zeros, None, [1, 1], [0, 0], [1, 1], C, 0.04, 0, None, "none", [], ""))
      block1():
        -> (<quantize of aten::mul(<dequantize of %x_q>, %gate)>)

The packed weight of 127s is an attribute filled on the first call, like
every packed weight of the lowering (``emit.Emitter.packed_weight``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from passes.lower_onednn.context import Lowering, island_filter, known_output
from passes.lower_onednn.emit import Emitter
from passes.lower_onednn.postops import ACTIVATIONS
from passes.lower_onednn.qparams import QUINT8
from qgraph.ir import ivalue
from qgraph.ir.graph import Graph, Node, Value
from qgraph.pattern import Match, Rewrite

__all__ = ["squeeze_excitation_rewrites"]

_INT = torch._C.IntType.get()
_INT_LIST = torch._C.ListType.ofInts()
_BOOL = torch._C.BoolType.get()
_GATE_SCALE = 127  # the SE trick's weight: the largest int8 with a symmetric range
# Ops a gate passes through on its way from a pooled map (element-wise, or 1x1 convs).
_GATE_PATH = frozenset(
    {
        "aten::quantize_per_tensor",
        "aten::dequantize",
        "aten::sigmoid",
        "aten::sigmoid_",
        "aten::hardsigmoid",
        "aten::hardsigmoid_",
        "aten::conv2d",
    }
    | {kind for a in ACTIVATIONS for kind in a.kinds}
)
_FEATURE_PATH = frozenset({"aten::quantize_per_tensor", "aten::dequantize"} | {k for a in ACTIVATIONS for k in a.kinds})


def _walks_back_to(value: Value, path: frozenset[str], ends: Callable[[Node], bool], limit: int = 32) -> bool:
    """Whether ``value`` comes from an op ``ends`` accepts through ops of ``path`` (first tensor inputs)."""
    for _ in range(limit):
        node = value.node()
        if ends(node):
            return True
        if node.kind() not in path or node.inputsSize() == 0:
            return False
        value = node.inputsAt(0)
    return False


def _pooled_map(node: Node) -> bool:
    kind = node.kind()
    if kind == "aten::adaptive_avg_pool2d":
        return node.inputsAt(1).node().kind() == "prim::Constant" and ivalue(node.inputsAt(1)) in (1, [1], [1, 1])
    if kind == "aten::mean" and node.inputsSize() == 4 and ivalue(node.inputsAt(2)) is True:
        dims = ivalue(node.inputsAt(1))
        return isinstance(dims, list) and sorted(d % 4 for d in dims) == [2, 3]
    return False


def _is_gate(match: Match) -> bool:
    feature = lambda node: node.kind() in ("aten::conv2d", "onednn::qconv2d_pointwise")  # noqa: E731
    return (
        _walks_back_to(match["gate"], _GATE_PATH, _pooled_map)
        and _walks_back_to(match["x_q"], _FEATURE_PATH, feature)
        and match.constant("dtype", None) == QUINT8
    )


def _gate_channels(gate: Value, limit: int = 32) -> int | None:
    """The channel count of a gate made by a conv (its weight's output channels), when the graph shows it."""
    for _ in range(limit):
        node = gate.node()
        if node.kind() == "aten::conv2d":
            weight = node.inputsAt(1)
            if weight.node().kind() == "aten::dequantize":
                weight = weight.node().inputsAt(0)
            constant = weight.node()
            if constant.kind() == "prim::Constant" and constant.kindOf("value") == "t":
                return int(constant.t("value").shape[0])
            return None
        if node.kind() not in _GATE_PATH or node.inputsSize() == 0:
            return None
        gate = node.inputsAt(0)
    return None


def _scale_channels(lowering: Lowering, graph: Graph, match: Match, before: Node) -> list[Value]:
    x, gate = match["x_q"], match["gate"]
    source, target = lowering.known(x), known_output(match)
    e = lowering.emitter(before, source=match.node("m"))
    per_channel = e.op("prim::ListConstruct", 1, e.op("aten::size", x, 1, type_=_INT), 1, 1, type_=_INT_LIST)
    same = e.op("aten::eq", e.op("aten::size", gate, type_=_INT_LIST), per_channel, type_=_BOOL)
    branch = e.node("prim::If", same)
    fused, general = branch.addBlock(), branch.addBlock()
    inner = Emitter(graph, fused.returnNode(), e.source, e.created)
    known = _gate_channels(gate)
    # With the channel count known, the weight, its scales and zero points are constants of the graph.
    channels = known if known is not None else inner.op("aten::size", x, 1, type_=_INT)

    def sizes(pe: Emitter, *dims: object) -> Value:
        return pe.op("prim::ListConstruct", *dims, type_=_INT_LIST)

    def weights(pe: Emitter) -> list:
        ones: torch.Tensor | Value
        scales: torch.Tensor | Value
        if known is not None:
            ones, scales = torch.full((known, 1, 1, 1), _GATE_SCALE, dtype=torch.int8), torch.ones(known)
        else:
            ones = pe.op("aten::full", sizes(pe, channels, 1, 1, 1), _GATE_SCALE, 1, None, None, None)
            scales = pe.op("aten::full", sizes(pe, channels), 1.0, 6, None, None, None)
        return [ones, scales, source.scale, source.zero_point, [1, 1], [0, 0], [1, 1], channels]

    packed = inner.packed_weight(lowering.new_packed_attribute(), "onednn::qconv_prepack", weights, x)
    w_scales = inner.op("aten::mul", inner.op("aten::reshape", gate, [-1]), 1.0 / _GATE_SCALE)
    if known is not None:
        zeros = inner.constant(torch.zeros(known, dtype=torch.long))
    else:
        zeros = inner.op("aten::zeros", sizes(inner, channels), 4, None, None, None)
    fused.registerOutput(
        inner.op(
            "onednn::qconv2d_pointwise",
            x,
            source.scale,
            source.zero_point,
            packed,
            w_scales,
            zeros,
            None,
            [1, 1],
            [0, 0],
            [1, 1],
            channels,
            target.scale,
            target.zero_point,
            None,
            "none",
            inner.scalar_list(()),
            "",
        )
    )
    other = Emitter(graph, general.returnNode(), e.source, e.created)
    general.registerOutput(other.quantize(other.op("aten::mul", other.dequantize(x, source), gate), target, True))
    lowering.values.set(branch.output(), target)
    return [branch.output()]


def squeeze_excitation_rewrites(lowering: Lowering) -> list[Rewrite]:
    """The rewrites of squeeze-excitation products, for ``mul`` and ``mul_`` with the gate on either side."""
    bound = functools.partial
    rewrites: list[Rewrite] = []
    for kind in ("aten::mul", "aten::mul_"):
        for operands in ("%x, %gate", "%gate, %x"):
            rewrites.append(
                Rewrite(
                    name=f"scale_channels_{kind.split('::')[1]}",
                    pattern=f"""graph(%x_q, %gate, %scale, %zero_point, %dtype):
    %x = aten::dequantize(%x_q)
    %m = {kind}({operands})
    %m_q = aten::quantize_per_tensor(%m, %scale, %zero_point, %dtype)
    return (%m_q)""",
                    replacement=bound(_scale_channels, lowering),
                    filters=(island_filter(lowering, _is_gate),),
                )
            )
    return rewrites

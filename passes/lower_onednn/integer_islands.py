"""Quantized islands of ops without weights, computed on plain integer tensors.

Takes islands ``dequantize -> op -> quantize`` of the normalized graph and
leaves code on the integers with the same meaning:

- clamps (relu, relu6, hardtanh, clamp) clamp the integers at the bounds'
  quantized values, then requantize when the output parameters differ;
- averages (adaptive and plain average pooling, mean) average the integers
  in float and round once into the output's integers
  (``(avg(q) - zp_in) * s_in / s_out + zp_out``): they commute with the
  affine map, except an average pool that counts zero padding, which pools
  the dequantized values instead;
- ``cat`` of quantized tensors concatenates the integers, each input in the
  output's parameters: an input quantized only for the cat is quantized
  straight into them, others are requantized;
- ``mul`` of a feature map by a per-channel gate of shape ``[1, C, 1, 1]``
  (squeeze-excitation) is a depthwise 1x1 oneDNN conv whose int8 weights
  are all 127 and whose per-channel weight scales are ``gate / 127``, passed
  at run time; a gate of another shape (checked at run time) multiplies
  the dequantized tensor instead::

      %y_q = onednn::qconv2d_pointwise(%x_q, 0.02, 3, %packed_127s, aten::mul(aten::reshape(%gate, [-1]), 1/127),
                                       %zeros, None, [1, 1], [0, 0], [1, 1], C, 0.04, 0, None, "none", [], "")
"""

from __future__ import annotations

import functools

import torch

from passes.lower_onednn.context import Lowering
from passes.lower_onednn.emit import Emitter
from passes.lower_onednn.postops import ACTIVATIONS
from passes.lower_onednn.qparams import QUINT8, QParams, is_unchanging_list
from qgraph.ir.graph import Graph, Node, Value
from qgraph.pattern import Match, Rewrite

__all__ = ["integer_island_rewrites"]

_CLAMPS = [a for a in ACTIVATIONS if a.name in ("relu", "relu6", "hardtanh", "clamp")]
_AVERAGES = {
    "aten::adaptive_avg_pool1d": "%size",
    "aten::adaptive_avg_pool2d": "%size",
    "aten::adaptive_avg_pool3d": "%size",
    "aten::mean": "%dims, %keepdim, %dtype_arg",
    "aten::avg_pool2d": "%kernel, %stride, %padding, %ceil_mode, %count_include_pad, %divisor",
}
_TENSOR_LIST = torch._C.ListType.ofTensors()
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


def _output(match: Match) -> QParams | None:
    scale, zero_point, dtype = (match.constant(n, None) for n in ("scale", "zero_point", "dtype"))
    if not isinstance(scale, float) or not isinstance(zero_point, int) or dtype not in (12, 13):
        return None
    return QParams(scale, zero_point, dtype)


def _accepts(lowering: Lowering, extra=None):
    def check(match: Match) -> bool:
        if lowering.params(match["x_q"]) is None or _output(match) is None:
            return False
        return extra is None or extra(match)

    return check


def _clamp(lowering: Lowering, activation, graph: Graph, match: Match, before: Node) -> list[Value]:
    source, target = lowering.params(match["x_q"]), _output(match)
    low, high = activation.bounds(match)
    e = lowering.emitter(before, source=match.node("y"))
    bounds = [None if abs(b) == float("inf") else source.quantize(b) for b in (low, high)]
    out = e.requantize(e.op("aten::clamp", match["x_q"], *bounds), source, target)
    lowering.values.set(out, target)
    return [out]


def _global_average_keeps_dims(kind: str, match: Match) -> bool | None:
    """For an average over all of H and W of an NCHW map: whether it keeps them as 1x1; else None."""
    if kind == "aten::adaptive_avg_pool2d":
        return True if match.constant("size", None) in (1, [1], [1, 1]) else None
    if kind == "aten::mean" and match.constant("dtype_arg", 0) is None:
        dims, keepdim = match.constant("dims", None), match.constant("keepdim", None)
        if isinstance(dims, list) and sorted(d % 4 for d in dims) == [2, 3] and -4 <= min(dims):
            return keepdim if isinstance(keepdim, bool) else None
    return None


def _global_average(e: Emitter, x: Value, keepdim: bool) -> Value:
    """The mean over H and W of ``x`` as floats, read as ``[N, H * W, C]`` rows.

    On a channels-last map that view is contiguous and the mean runs along
    it; the NCHW reduction of a channels-last tensor takes a slow path.
    """
    rows = e.op("aten::flatten", e.op("aten::permute", x, [0, 2, 3, 1]), 1, 2)
    mean = e.op("aten::mean", e.to_float(rows), [1], False, None)
    if not keepdim:
        return mean
    return e.op("aten::unsqueeze", e.op("aten::unsqueeze", mean, -1), -1)


def _average(lowering: Lowering, kind: str, arguments: list[str], graph: Graph, match: Match, before: Node):
    source, target = lowering.params(match["x_q"]), _output(match)
    e = lowering.emitter(before, source=match.node("y"))
    values = [match[name.strip().lstrip("%")] for name in arguments]
    keepdim = _global_average_keeps_dims(kind, match)
    if keepdim is not None:
        out = e.quantize_units(_global_average(e, match["x_q"], keepdim), source, target)
        lowering.values.set(out, target)
        return [out]
    if kind == "aten::avg_pool2d" and any(match.constant("padding", [1])) and match.constant("count_include_pad", True):
        # Zero padding is a real 0, which in integers is the zero point: pool the real values.
        out = e.quantize(e.op(kind, e.dequantize(match["x_q"], source), *values), target)
    else:
        out = e.quantize_units(e.op(kind, e.to_float(match["x_q"]), *values), source, target)
    lowering.values.set(out, target)
    return [out]


def _cat_elements(lowering: Lowering, listed: Value) -> list[Value] | None:
    producer = listed.node()
    if not is_unchanging_list(listed):
        return None
    if producer.kind() == "aten::dequantize":
        source = producer.inputsAt(0)
        if source.node().kind() == "prim::ListConstruct" and is_unchanging_list(source):
            elements = list(source.node().inputs())
            return elements if all(lowering.params(v) is not None for v in elements) else None
        return None
    if producer.kind() == "prim::ListConstruct":
        reads = [v.node() for v in producer.inputs()]
        if all(r.kind() == "aten::dequantize" and lowering.params(r.inputsAt(0)) for r in reads):
            return [r.inputsAt(0) for r in reads]
    return None


def _cat(lowering: Lowering, graph: Graph, match: Match, before: Node) -> list[Value]:
    target = _output(match)
    e = lowering.emitter(before, source=match.node("c"))
    elements = []
    for value in _cat_elements(lowering, match["list"]):
        producer = value.node()
        if producer.kind() == "aten::quantize_per_tensor" and len(value.uses()) == 1:
            # Quantized only to be concatenated: quantize straight into the output's parameters.
            for offset, field in ((1, target.scale), (2, target.zero_point), (3, target.dtype)):
                producer.replaceInput(offset, e.constant(field))
            lowering.values.set(value, target)
        elements.append(e.requantize(value, lowering.params(value), target))
    out = e.op("aten::cat", e.op("prim::ListConstruct", *elements, type_=_TENSOR_LIST), match["dim"])
    lowering.values.set(out, target)
    return [out]


def _walks_back_to(value: Value, path: frozenset[str], ends, limit: int = 32) -> bool:
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
        return node.inputsAt(1).node().kind() == "prim::Constant" and node.inputsAt(1).toIValue() in (1, [1], [1, 1])
    if kind == "aten::mean" and node.inputsSize() == 4 and node.inputsAt(2).toIValue() is True:
        dims = node.inputsAt(1).toIValue()
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
    source, target = lowering.params(x), _output(match)
    e = lowering.emitter(before, source=match.node("m"))
    per_channel = e.op("prim::ListConstruct", 1, e.op("aten::size", x, 1, type_=_INT), 1, 1, type_=_INT_LIST)
    same = e.op("aten::eq", e.op("aten::size", gate, type_=_INT_LIST), per_channel, type_=_BOOL)
    branch = e.node("prim::If", same)
    fused, general = branch.addBlock(), branch.addBlock()
    inner = Emitter(graph, fused.returnNode(), e.source, e.created)
    known = _gate_channels(gate)
    # With the channel count known, the weight, its scales and zero points are constants of the graph.
    channels = known if known is not None else inner.op("aten::size", x, 1, type_=_INT)

    def sizes(pe: Emitter, *dims) -> Value:
        return pe.op("prim::ListConstruct", *dims, type_=_INT_LIST)

    def weights(pe: Emitter) -> list:
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


def integer_island_rewrites(lowering: Lowering) -> tuple[Rewrite, ...]:
    bound = functools.partial
    quantize = "%y_q = aten::quantize_per_tensor(%y, %scale, %zero_point, %dtype)\n    return (%y_q)"
    # Gates first: they are recognized by the pooling they come from, before the pooling is lowered.
    rewrites = []
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
                    filters=(_accepts(lowering, _is_gate),),
                )
            )
    for activation in _CLAMPS:
        arguments = "".join(f", %{n}" for n in activation.arguments)
        for kind in activation.kinds:
            rewrites.append(
                Rewrite(
                    name=f"integer_{kind.split('::')[1]}",
                    pattern=f"""graph(%x_q, %scale, %zero_point, %dtype{arguments}):
    %x = aten::dequantize(%x_q)
    %y = {kind}(%x{arguments})
    {quantize}""",
                    replacement=bound(_clamp, lowering, activation),
                    filters=(_accepts(lowering, activation.is_static),),
                )
            )
    for kind, arguments in _AVERAGES.items():
        rewrites.append(
            Rewrite(
                name=f"integer_{kind.split('::')[1]}",
                pattern=f"""graph(%x_q, %scale, %zero_point, %dtype, {arguments}):
    %x = aten::dequantize(%x_q)
    %y = {kind}(%x, {arguments})
    {quantize}""",
                replacement=bound(_average, lowering, kind, arguments.split(",")),
                filters=(_accepts(lowering),),
            )
        )
    rewrites.append(
        Rewrite(
            name="integer_cat",
            pattern="""graph(%list, %dim, %scale, %zero_point, %dtype):
    %c = aten::cat(%list, %dim)
    %c_q = aten::quantize_per_tensor(%c, %scale, %zero_point, %dtype)
    return (%c_q)""",
            replacement=bound(_cat, lowering),
            filters=(lambda m: _output(m) is not None and _cat_elements(lowering, m["list"]) is not None,),
        )
    )
    return tuple(rewrites)

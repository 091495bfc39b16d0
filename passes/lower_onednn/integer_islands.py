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
- ``mul`` of a feature map by a squeeze-excitation gate: ``squeeze_excitation``.
"""

from __future__ import annotations

import functools
import math

import torch

from passes.lower_onednn.context import Lowering, island_filter, known_output, output_params
from passes.lower_onednn.emit import Emitter
from passes.lower_onednn.postops import ACTIVATIONS, Activation
from passes.lower_onednn.qparams import is_unchanging_list
from passes.lower_onednn.squeeze_excitation import squeeze_excitation_rewrites
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


def _clamp(lowering: Lowering, activation: Activation, graph: Graph, match: Match, before: Node) -> list[Value]:
    source, target = lowering.known(match["x_q"]), known_output(match)
    low, high = activation.bounds(match) or (-math.inf, math.inf)
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


def _average(
    lowering: Lowering, kind: str, arguments: list[str], graph: Graph, match: Match, before: Node
) -> list[Value]:
    source, target = lowering.known(match["x_q"]), known_output(match)
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
    target = known_output(match)
    e = lowering.emitter(before, source=match.node("c"))
    elements = []
    for value in _cat_elements(lowering, match["list"]) or []:
        producer = value.node()
        if producer.kind() == "aten::quantize_per_tensor" and len(value.uses()) == 1:
            # Quantized only to be concatenated: quantize straight into the output's parameters.
            for offset, field in ((1, target.scale), (2, target.zero_point), (3, target.dtype)):
                producer.replaceInput(offset, e.constant(field))
            lowering.values.set(value, target)
        elements.append(e.requantize(value, lowering.known(value), target))
    out = e.op("aten::cat", e.op("prim::ListConstruct", *elements, type_=_TENSOR_LIST), match["dim"])
    lowering.values.set(out, target)
    return [out]


def integer_island_rewrites(lowering: Lowering) -> tuple[Rewrite, ...]:
    bound = functools.partial
    quantize = "%y_q = aten::quantize_per_tensor(%y, %scale, %zero_point, %dtype)\n    return (%y_q)"
    rewrites: list[Rewrite] = []
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
                    filters=(island_filter(lowering, activation.is_static),),
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
                filters=(island_filter(lowering),),
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
            filters=(lambda m: output_params(m) is not None and _cat_elements(lowering, m["list"]) is not None,),
        )
    )
    # Gates first: they are recognized by the pooling they come from, before the pooling is lowered.
    return (*squeeze_excitation_rewrites(lowering), *rewrites)

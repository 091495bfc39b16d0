"""The edges between integer and float code: the last quantize and dequantize ops become plain arithmetic.

Takes the graph after the island stages, where what is left of PyTorch's
quantized dtypes is at the borders of float code, and leaves a graph with
none:

1. every op still computing on float tensors is recorded for the float-op
   report, with the reason it is float;
2. a oneDNN op whose integer result is only dequantized, directly or after
   shape ops (a classifier's logits, a transformer's queries and keys
   reshaped into heads for a float matmul) computes a float result instead
   (``output_dtype=float32``), with the activation the output range applied
   as an explicit post-op;
3. float code reads an unquantized value directly: ``dequantize(quantize(x))``
   becomes ``x`` (quantizing only to dequantize loses precision for nothing);
4. ``aten::quantize_per_tensor`` becomes the exact integer conversion of
   ``emit.Emitter.quantize`` (channels-last where a conv reads it), and
   ``aten::dequantize`` the float conversion; a quantized constant left for
   a float op becomes its float value.
"""

from __future__ import annotations

import torch

from passes.lower_onednn.context import Lowering
from passes.lower_onednn.conv import conv_is_lowerable
from passes.lower_onednn.emit import Emitter
from passes.lower_onednn.linear import linear_is_lowerable
from passes.lower_onednn.postops import PostOp
from passes.lower_onednn.qparams import SHAPE_OPS
from qgraph.ir import NodeIndex, walk
from qgraph.ir.graph import Node, Value
from qgraph.pattern import Match, compile_pattern, match_at
from qgraph.quant.float_ops import UNOBSERVED_INPUT, UNSUPPORTED_OP, tag_float_op

__all__ = ["lower_boundaries", "float_reason"]

# Positions of output_scale, output_zero_point, output_dtype, attr, scalars, algorithm.
_OUTPUT_ARGUMENTS = {"onednn::qconv2d_pointwise": 11, "onednn::qlinear_pointwise": 7}
_FLOAT32 = 6
_QUANTIZED_KINDS = frozenset(
    {
        "aten::quantize_per_tensor",
        "aten::quantize_per_channel",
        "aten::dequantize",
        "aten::q_scale",
        "aten::q_zero_point",
        "aten::q_per_channel_scales",
        "aten::q_per_channel_zero_points",
        "aten::int_repr",
    }
)
_REASONS = {
    "aten::sigmoid": "oneDNN has no sigmoid post-op and PyTorch's plain-integer oneDNN ops no sigmoid kernel",
    "aten::hardsigmoid": "oneDNN has no hardsigmoid post-op and PyTorch's plain-integer oneDNN ops no kernel for it",
    "aten::add": "onednn::qadd reads uint8 values of 128 and above as negative in PyTorch 2.13; an add that no conv "
    "or linear can take as a sum post-op runs in float",
    "aten::mul": "onednn::qmul reads uint8 values of 128 and above as negative in PyTorch 2.13; only a per-channel "
    "gate becomes a oneDNN op",
}


def _dequantized_through_shape_ops(value: Value) -> tuple[list[Node], list[Value]] | None:
    """The dequantize ops ``value`` reaches through shape ops, and the values on the way; None if it reaches others."""
    dequantizes, passed = [], []
    pending = [value]
    while pending:
        current = pending.pop()
        for use in current.uses():
            user = use.user
            if user.kind() == "aten::dequantize":
                dequantizes.append(user)
            elif user.kind() in SHAPE_OPS and use.offset == 0:
                outputs = [o for o in user.outputs() if "Tensor" in str(o.type())]
                passed += outputs
                pending += outputs
            else:
                return None
    return dequantizes, passed


def _float_output(lowering: Lowering, node: Node) -> bool:
    """Make the oneDNN op ``node`` compute floats when every use of its result (through shape ops) dequantizes it."""
    first = _OUTPUT_ARGUMENTS.get(node.kind())
    post_op: PostOp | None = lowering.range_folded.get(node)
    reached = _dequantized_through_shape_ops(node.output())
    if first is None or post_op is None or reached is None or not reached[0]:
        return False
    dequantizes, passed = reached
    e = lowering.emitter(node)
    for offset, value in enumerate(
        (1.0, 0, _FLOAT32, post_op.attr, e.scalar_list(post_op.scalars), post_op.algorithm or _algorithm(node))
    ):
        node.replaceInput(first + offset, value if isinstance(value, Value) else e.constant(value))
    for dequantize in dequantizes:
        dequantize.output().replaceAllUsesWith(dequantize.inputsAt(0))
    for value in [node.output(), *passed]:
        lowering.values.forget(value)
    return True


def _algorithm(node: Node) -> str:
    return "none" if node.kind() == "onednn::qlinear_pointwise" else ""


def float_reason(node: Node, lowering: Lowering) -> tuple[str, str]:
    """The report category and reason for a float op of the lowered graph."""
    kind = node.kind()
    if not any(v.node().kind() == "aten::dequantize" for v in node.inputs()):
        return UNOBSERVED_INPUT, "its input is a float tensor (not observed, or produced by a float op)"
    name = kind.split("::")[1].rstrip("_")
    base = f"aten::{name}"
    if base in _REASONS:
        return UNSUPPORTED_OP, _REASONS[base]
    if base in ("aten::conv2d", "aten::linear"):
        return UNSUPPORTED_OP, f"{base} stays float: " + _why_not(node, lowering)
    return UNSUPPORTED_OP, f"the onednn lowering has no integer kernel for {base}"


def _why_not(node: Node, lowering: Lowering) -> str:
    kind = node.kind()
    text = (
        "graph(%x_q, %w_q, %b, %stride, %padding, %dilation, %groups):\n"
        "    %x = aten::dequantize(%x_q)\n    %w = aten::dequantize(%w_q)\n"
        "    %y = aten::conv2d(%x, %w, %b, %stride, %padding, %dilation, %groups)\n    return (%y)"
        if kind == "aten::conv2d"
        else "graph(%x_q, %w_q, %b):\n    %x = aten::dequantize(%x_q)\n    %w = aten::dequantize(%w_q)\n"
        "    %y = aten::linear(%x, %w, %b)\n    return (%y)"
    )
    match: Match | None = match_at(compile_pattern(text), node)
    if match is None:
        return "its input or weight is not quantized"
    check = conv_is_lowerable if kind == "aten::conv2d" else linear_is_lowerable
    return check(match, lowering) or "its output is not quantized to quint8"


def _is_float_op(node: Node, lowering: Lowering) -> bool:
    kind = node.kind()
    if not kind.startswith("aten::") or kind in _QUANTIZED_KINDS or node in lowering.created:
        return False
    if not any(o.type().kind() == "TensorType" for o in node.outputs()):
        return False
    return any(
        v.type().kind() == "TensorType" and v.node().kind() != "prim::Constant" and lowering.params(v) is None
        for v in node.inputs()
    )


def lower_boundaries(lowering: Lowering) -> None:
    """Steps 1-4 of the module docstring on ``lowering``'s graph, in place."""
    graph = lowering.graph
    # Recorded first, while the dequantize ops still show which float ops read quantized values.
    for node in walk(graph):
        if _is_float_op(node, lowering):
            tag_float_op(node, *float_reason(node, lowering))
    index = NodeIndex(graph)
    for kind in _OUTPUT_ARGUMENTS:
        for node in index.of_kind(kind):
            _float_output(lowering, node)
    for node in index.of_kind("aten::dequantize"):
        source = node.inputsAt(0).node()
        if source.kind() == "aten::quantize_per_tensor":
            node.output().replaceAllUsesWith(source.inputsAt(0))
    torch._C._jit_pass_dce(graph)
    index = NodeIndex(graph)
    for node in index.of_kind("aten::quantize_per_tensor"):
        _lower_quantize(lowering, node)
    for node in index.of_kind("aten::dequantize"):
        _lower_dequantize(lowering, node)
    torch._C._jit_pass_dce(graph)


def _lower_quantize(lowering: Lowering, node: Node) -> None:
    params = lowering.params(node.output())
    if params is None:
        raise RuntimeError(f"onednn lowering: the parameters of {node} are not known statically")
    e = lowering.emitter(node)
    integers = e.quantize(node.inputsAt(0), params, node.output() in lowering.channels_last)
    lowering.values.set(integers, params)
    node.output().replaceAllUsesWith(integers)


def _lower_dequantize(lowering: Lowering, node: Node) -> None:
    value = node.inputsAt(0)
    source = value.node()
    e: Emitter = lowering.emitter(node)
    if source.kind() == "prim::Constant" and value.type().kind() == "TensorType":
        real = e.constant(source.t("value").dequantize())
    elif lowering.params(value) is not None:
        real = e.dequantize(value, lowering.known(value))
    elif source.kind() in ("prim::ListConstruct", "prim::TupleConstruct"):
        # Elements that are not quantized (None for a branch eval mode skips) stay as they are.
        reals = [v if lowering.params(v) is None else e.dequantize(v, lowering.known(v)) for v in source.inputs()]
        real = e.op(source.kind(), *reals, type_=node.output().type())
    else:
        raise RuntimeError(f"onednn lowering: cannot dequantize {value.debugName()} (made by {source.kind()})")
    node.output().replaceAllUsesWith(real)

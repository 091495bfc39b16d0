"""The pattern tables shared by the conv and linear lowerings, and the residual-sum safety checks.

An island is one quantized op with what follows it up to its quantize: the
op alone, the op and one activation (``postops.ACTIVATIONS``), or the op and
a residual add of another quantized value (+ relu)::

    <head: dequantize the input and the weight, the op, producing %y>
    %e = aten::silu(%y)                        | %a = aten::dequantize(%acc_q)
                                               | %r = aten::add(%y, %a, %alpha)
                                               | %r2 = aten::relu(%r)
    %out = aten::quantize_per_tensor(%e, %scale, %zero_point, %dtype)

``island_rewrites`` makes one ``Rewrite`` per shape for a head, most
specific first. The oneDNN ``sum`` post-op writes the result into the
accumulator in place: ``accumulator`` clones an accumulator that is read
later or may share memory with another tensor, and ``sum_guard`` checks at
run time that it has the output's shape (an add may broadcast).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from passes.lower_onednn.context import Lowering
from passes.lower_onednn.emit import CHANNELS_LAST, Emitter
from passes.lower_onednn.postops import NO_POST_OP, Activation, PostOp, activations_for
from passes.lower_onednn.qparams import QUINT8, QParams
from passes.lower_onednn.weights import int8_weight
from qgraph.ir.graph import Node, Value
from qgraph.pattern import Match, Rewrite

__all__ = ["Island", "OnednnCall", "island_rewrites", "emit_island", "operands_problem"]

_BOOL = torch._C.BoolType.get()
_FLOAT32 = 6

# Ops whose results are new tensors nothing else aliases, in the layout the sum of each op kind needs.
_FRESH_IN_LAYOUT = {
    "onednn::qconv2d_pointwise": frozenset({"aten::quantize_per_tensor", "onednn::qconv2d_pointwise"}),
    "onednn::qlinear_pointwise": frozenset({"aten::quantize_per_tensor", "onednn::qlinear_pointwise"}),
}
_CONTIGUOUS = 0  # MemoryFormat numbers
# Readers that are done with a tensor when they return (they keep no view of it).
_READ_ONLY = frozenset(
    {"aten::dequantize", "onednn::qconv2d_pointwise", "onednn::qlinear_pointwise", "aten::size", "aten::dim"}
)


@dataclass(frozen=True)
class OnednnCall:
    """A oneDNN conv or linear call but for its output and post-op arguments."""

    kind: str  # "onednn::qconv2d_pointwise" or "onednn::qlinear_pointwise"
    inputs: list  # x, x_scale, x_zero_point, packed weight, weight scales, weight zero points
    bias: Any
    geometry: list  # stride, padding, dilation, groups of a conv; empty for a linear

    def _algorithm(self, post_op: PostOp) -> str:
        # The linear op takes a plain string, "none" for no algorithm.
        return post_op.algorithm or ("none" if self.kind == "onednn::qlinear_pointwise" else "")

    def emit(self, e: Emitter, output: QParams | None, post_op: PostOp) -> Value:
        """The op, quantizing its result with ``output`` (a float result when None)."""
        scale, zero_point, dtype = (output.scale, output.zero_point, None) if output else (1.0, 0, _FLOAT32)
        tail = [scale, zero_point, dtype, post_op.attr, e.scalar_list(post_op.scalars), self._algorithm(post_op)]
        return e.op(self.kind, *self.inputs, self.bias, *self.geometry, *tail)

    def emit_sum(self, e: Emitter, acc: Value, acc_params: QParams, output: QParams, post_op: PostOp) -> Value:
        """The ``.binary`` op adding ``acc`` (in place) before ``post_op``."""
        return e.op(
            self.kind,
            *self.inputs,
            acc,
            self.bias,
            *self.geometry,
            output.scale,
            output.zero_point,
            None,
            acc_params.scale,
            acc_params.zero_point,
            "sum",
            1.0,
            post_op.attr,
            e.scalar_list(post_op.scalars),
            self._algorithm(post_op),
        )


@dataclass(frozen=True)
class Island:
    """What follows the op in one island shape."""

    activation: Activation | None = None
    activation_kind: str | None = None
    residual: bool = False
    relu_kind: str | None = None  # a relu after the residual add

    @property
    def name(self) -> str:
        if self.residual:
            return "sum" + ("_relu" if self.relu_kind else "")
        return self.activation_kind.split("::")[1] if self.activation_kind else "plain"

    def tail(self) -> tuple[str, str, str]:
        """Extra pattern inputs, pattern lines after the head, and the value the quantize reads."""
        if self.residual:
            lines = "    %a = aten::dequantize(%acc_q)\n    %r = aten::add(%y, %a, %alpha)\n"
            if self.relu_kind:
                return ", %acc_q, %alpha", lines + f"    %r2 = {self.relu_kind}(%r)\n", "r2"
            return ", %acc_q, %alpha", lines, "r"
        if self.activation is not None:
            arguments = "".join(f", %{name}" for name in self.activation.arguments)
            return arguments, f"    %e = {self.activation_kind}(%y{arguments})\n", "e"
        return "", "", "y"

    def post_op(self, match: Match, output: QParams | None) -> PostOp:
        if self.residual:
            return PostOp("relu") if self.relu_kind else NO_POST_OP
        if self.activation is not None:
            return self.activation.post_op(match, output)
        return NO_POST_OP

    def accepts(self, match: Match, lowering: Lowering) -> bool:
        if self.activation is not None and not self.activation.is_static(match):
            return False
        if self.residual:
            params = lowering.params(match["acc_q"])
            return params is not None and params.dtype == QUINT8 and match.constant("alpha", None) == 1
        return True


def operands_problem(match: Match, lowering: Lowering, weight_dims: int) -> str | None:
    """Why the input, weight or bias of a conv or linear match cannot go to oneDNN, or None."""
    params = lowering.params(match["x_q"])
    if params is None or params.dtype != QUINT8:
        return "its input is not quantized to quint8 (the oneDNN ops here take uint8 activations)"
    weight = int8_weight(match["w_q"])
    if isinstance(weight, str):
        return weight
    if weight.values.dim() != weight_dims:
        return f"its weight is not {weight_dims}-D"
    if match["b"].node().kind() != "prim::Constant":
        return "its bias is computed at run time"
    return None


def _islands(op_kind: str) -> list[Island]:
    shapes = [Island(residual=True, relu_kind=kind) for kind in ("aten::relu", "aten::relu_")]
    shapes.append(Island(residual=True))
    shapes += [Island(a, kind) for a in activations_for(op_kind) for kind in a.kinds]
    shapes.append(Island())
    return shapes


def island_rewrites(
    name: str,
    head: str,
    head_inputs: str,
    op_kind: str,
    why_not: Callable[[Match], str | None],
    lowering: Lowering,
    builder: Callable[[Island], Callable],
) -> tuple[Rewrite, ...]:
    """One rewrite per island shape of ``op_kind``; ``builder(island)`` makes each replacement."""
    rewrites = []
    for island in _islands(op_kind):
        extra, lines, last = island.tail()

        def accepts(match: Match, island: Island = island) -> bool:
            output = match.constant("dtype", None)
            return (
                output == QUINT8
                and isinstance(match.constant("scale", None), float)
                and isinstance(match.constant("zero_point", None), int)
                and island.accepts(match, lowering)
                and why_not(match) is None
            )

        rewrites.append(
            Rewrite(
                name=f"{name}_{island.name}",
                pattern=f"""graph({head_inputs}, %scale, %zero_point, %dtype{extra}):
    {head}
{lines}    %out = aten::quantize_per_tensor(%{last}, %scale, %zero_point, %dtype)
    return (%out)""",
                replacement=builder(island),
                filters=(accepts,),
                source="y",
            )
        )
    return tuple(rewrites)


def accumulator(lowering: Lowering, e: Emitter, acc: Value, own_read: Node, anchor: Node, op_kind: str) -> Value:
    """``acc``, or a copy of it when the in-place sum of an ``op_kind`` op must not overwrite it.

    Conv sums need a channels-last accumulator, linear sums a contiguous one.
    """
    if _may_overwrite(lowering, acc, own_read, anchor, _FRESH_IN_LAYOUT[op_kind]):
        if op_kind == "onednn::qconv2d_pointwise":
            lowering.channels_last.add(acc)
        return acc
    layout = CHANNELS_LAST if op_kind == "onednn::qconv2d_pointwise" else _CONTIGUOUS
    return e.op("aten::clone", acc, layout)


def _may_overwrite(lowering: Lowering, acc: Value, own_read: Node, anchor: Node, fresh: frozenset[str]) -> bool:
    producer = acc.node()
    # An earlier sum's run-time choice yields a new tensor from either branch.
    chosen_sum = producer.kind() == "prim::If" and producer in lowering.created
    if not (producer.kind() in fresh or chosen_sum) or producer.owningBlock() != anchor.owningBlock():
        return False
    for use in acc.uses():
        user = use.user
        if user == own_read:
            continue
        if user.kind() not in _READ_ONLY or user.owningBlock() != anchor.owningBlock() or not user.isBefore(anchor):
            return False
    return True


def emit_island(
    lowering: Lowering,
    e: Emitter,
    match: Match,
    island: Island,
    call: OnednnCall,
    output: QParams,
    output_size: Callable[[], Value],
) -> list[Value]:
    """``call`` with the island's epilogue; ``output_size()`` builds the run-time size of its result (for a sum)."""
    post_op = island.post_op(match, output)
    if island.residual:
        result = lower_sum(lowering, e, match, call, output, post_op, output_size())
    else:
        result = call.emit(e, output, post_op)
        lowering.range_folded[result.node()] = island.post_op(match, None)
    lowering.values.set(result, output)
    return [result]


def lower_sum(
    lowering: Lowering, e: Emitter, match: Match, call: OnednnCall, output: QParams, post_op: PostOp, expected: Value
) -> Value:
    """``call`` with the residual of ``match`` as a ``sum`` post-op, where the accumulator has the size ``expected``.

    The size is checked at run time; an add that broadcasts is computed
    unfused: the op's float result plus the dequantized accumulator.
    """
    acc_params = lowering.known(match["acc_q"])
    acc = accumulator(lowering, e, match["acc_q"], match.node("a"), match.anchor, call.kind)
    same = e.op("aten::eq", e.op("aten::size", acc, type_=torch._C.ListType.ofInts()), expected, type_=_BOOL)
    branch = e.node("prim::If", same)
    fused, unfused = branch.addBlock(), branch.addBlock()
    inner = Emitter(e.graph, fused.returnNode(), e.source, e.created)
    fused.registerOutput(call.emit_sum(inner, acc, acc_params, output, post_op))
    inner = Emitter(e.graph, unfused.returnNode(), e.source, e.created)
    total = inner.op("aten::add", call.emit(inner, None, NO_POST_OP), inner.dequantize(acc, acc_params), 1)
    if post_op.attr == "relu":
        total = inner.op("aten::relu", total)
    unfused.registerOutput(inner.quantize(total, output, channels_last=call.kind == "onednn::qconv2d_pointwise"))
    return branch.output()

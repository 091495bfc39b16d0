"""Carry quantization through ops that need no observer, on an inlined graph.

After observers became quantize / dequantize pairs, ``forward`` is inlined
and this module finishes the debug model, in the reference's order:

1. dynamic quantization: an activation's choose_qparams / quantize /
   dequantize chain with several users is repeated per user; a chain whose
   single user is not dynamically quantizable is removed (the value stays float);
2. a quantize of an ``if`` output moves into each branch;
3. a dequantize with several uses becomes one dequantize per use;
4. a clamp / hardtanh bound shared with other uses gets its own copy;
5. general ops whose tensor inputs are all dequantized values run on the
   quantized tensors:

   - value ops (avg pooling, mean, upsample, clamp, hardtanh, leaky_relu,
     add/mul with a scalar) are requantized with their input's qparams::

         %a = aten::dequantize(%q)
         %y = aten::avg_pool2d(%a, ...)
       becomes
         %a = aten::dequantize(%q)
         %y = aten::avg_pool2d(%a, ...)
         %s = aten::q_scale(%q)
         %z = aten::q_zero_point(%q)
         %t = prim::dtype(%q)
         %y.quant = aten::quantize_per_tensor(%y, %s, %z, %t)
         %y.quant.dequant.0 = aten::dequantize(%y.quant)

     (a clamp's scalar bounds are quantized the same way, so the float op
     sees bounds rounded like the quantized kernel's);
   - fixed-range ops (sigmoid, hardsigmoid: scale 1/256, zero point 0;
     tanh: 2/256, 128) are requantized with those constants;
   - shape ops (max pooling, flatten, view, relu, ``if`` with one output,
     tuple / list construct and unpack, ...) take the quantized input
     directly and their outputs get a dequantize per use;

6. a dequantize whose only user is ``size`` / ``len`` / ``dim`` / ``numel``
   is dropped.
"""

from __future__ import annotations

import warnings

import torch
from torch.ao.quantization.quant_type import QuantType

from passes._observed_values import (
    FIXED_QPARAMS_ATEN,
    GENERAL_VALUE_ATEN,
    aten_name,
    is_binary_with_scalar,
    is_quantizable,
    pass_through_inputs,
)
from passes.replicate_dequantize import replicate_dequantize
from passes.replicate_quantize import replicate_quantize
from qgraph.ir.graph import Block, Graph, Node, Value, inputs_of, nested_blocks, outputs_of
from qgraph.pattern import Match, Rewrite, find_matches, rewrite

__all__ = ["NodeBuilder", "propagate_quantization", "insert_dequantize_per_use"]

_TENSOR = torch._C.TensorType.get()
_FLOAT = torch._C.FloatType.get()
_INT = torch._C.IntType.get()

CLAMP_ATEN = frozenset({"hardtanh", "hardtanh_", "clamp"})
TENSOR_INFO_ATEN = frozenset({"size", "len", "dim", "numel"})

# Output ranges of these ops are fixed, so are their qparams: (scale, zero_point, dtype).
_ZERO_TO_ONE = (1.0 / 256.0, 0, torch.quint8)
_MINUS_ONE_TO_ONE = (2.0 / 256.0, 128, torch.quint8)
FIXED_QPARAMS = {
    "hardsigmoid": _ZERO_TO_ONE,
    "hardsigmoid_": _ZERO_TO_ONE,
    "sigmoid": _ZERO_TO_ONE,
    "sigmoid_": _ZERO_TO_ONE,
    "tanh": _MINUS_ONE_TO_ONE,
    "tanh_": _MINUS_ONE_TO_ONE,
}
assert set(FIXED_QPARAMS) == FIXED_QPARAMS_ATEN

_DYNAMIC_QUANT_CHAIN = """graph(%a, %reduce_range, %a_dtype):
    %a_scale : float, %a_zero_point : int = aten::_choose_qparams_per_tensor(%a, %reduce_range)
    %a_quant = aten::quantize_per_tensor(%a, %a_scale, %a_zero_point, %a_dtype)
    %a_dequant = aten::dequantize(%a_quant)
    return (%a_dequant)"""


def _single_use_by(predicate):
    def check(match: Match) -> bool:
        uses = match["a_dequant"].uses()
        return len(uses) == 1 and predicate(uses[0].user)

    return check


REDUNDANT_QUANTIZATION = [
    # A run-time-quantized activation whose user is not a dynamically
    # quantized op stays float.
    Rewrite(
        name="unused_dynamic_activation_quant",
        pattern=_DYNAMIC_QUANT_CHAIN,
        replacement="""graph(%a, %reduce_range, %a_dtype):
            return (%a)""",
        filters=(_single_use_by(lambda user: not is_quantizable(user, QuantType.DYNAMIC)),),
    ),
]

REDUNDANT_DEQUANTIZE = [
    # size/len/dim/numel read the same from the quantized tensor.
    Rewrite(
        name="dequantize_for_tensor_info",
        pattern="""graph(%a_quant):
            %a_dequant = aten::dequantize(%a_quant)
            return (%a_dequant)""",
        replacement="""graph(%a_quant):
            return (%a_quant)""",
        filters=(_single_use_by(lambda user: aten_name(user) in TENSOR_INFO_ATEN),),
    ),
]


class NodeBuilder:
    """Creates nodes in sequence, right after ``after`` or right before ``before``."""

    def __init__(self, graph: Graph, *, after: Node | None = None, before: Node | None = None):
        if (after is None) == (before is None):
            raise ValueError("give exactly one of after= and before=")
        self.graph, self.last, self.before = graph, after, before

    def place(self, node: Node) -> Node:
        if self.before is not None:
            node.insertBefore(self.before)
        else:
            node.insertAfter(self.last)
            self.last = node
        return node

    def op(self, kind: str, inputs, *, n_outputs: int = 1, name: str | None = None, type_=None) -> Node:
        node = self.place(self.graph.create(kind, list(inputs), n_outputs))
        if n_outputs == 1:
            if type_ is not None:
                node.output().setType(type_)
            if name is not None:
                node.output().setDebugName(name)
        return node

    def constant(self, value) -> Value:
        constant = self.graph.insertConstant(value)
        if self.before is not None:
            constant.node().moveBefore(self.before)
        else:
            constant.node().moveAfter(self.last)
            self.last = constant.node()
        return constant

    def get_attr(self, obj: Value, field: str, type_) -> Value:
        node = self.graph.create("prim::GetAttr", [obj], 1)
        node.s_("name", field)
        self.place(node)
        node.output().setType(type_)
        node.output().setDebugName(field)
        return node.output()

    def dequantize(self, quantized: Value, like: Value, index: int = 0) -> Node:
        return self.op("aten::dequantize", [quantized], name=f"{like.debugName()}.dequant.{index}", type_=like.type())

    def choose_qparams_quant_dequant(self, value: Value, dtype: Value, quantize: str) -> Node:
        """Run-time qparams for ``value``: choose_qparams, quantize, dequantize (returned)."""
        # reduce_range is True as in the reference (qnnpack ignores it).
        reduce_range = self.constant(True)
        choose = self.op("aten::_choose_qparams_per_tensor", [value, reduce_range], n_outputs=2)
        scale, zero_point = choose.outputsAt(0), choose.outputsAt(1)
        scale.setType(_FLOAT)
        scale.setDebugName(f"{value.debugName()}.scale")
        zero_point.setType(_INT)
        zero_point.setDebugName(f"{value.debugName()}.zero_point")
        quant = self.op(quantize, [value, scale, zero_point, dtype], name=f"{value.debugName()}.quant", type_=_TENSOR)
        return self.dequantize(quant.output(), value)


def insert_dequantize_per_use(graph: Graph, quantized: Value, original: Value) -> list[Value]:
    """Give each use of ``original`` its own ``dequantize(quantized)`` placed right before the user."""
    outputs = []
    for index, use in enumerate(list(original.uses())):
        dequant = NodeBuilder(graph, before=use.user).dequantize(quantized, original, index)
        use.user.replaceInput(use.offset, dequant.output())
        outputs.append(dequant.output())
    return outputs


def _stack_order_nodes(graph: Graph, kinds: frozenset[str] | None = None) -> list[Node]:
    found = []
    stack = [graph.block()]
    while stack:
        block = stack.pop()
        for node in block.nodes():
            if kinds is None or node.kind() in kinds:
                found.append(node)
            stack.extend(nested_blocks(node))
    return found


def _destroy(nodes) -> None:
    for node in nodes:
        node.removeAllInputs()
    for node in nodes:
        node.destroy()


def replicate_choose_qparams_quant_dequant(graph: Graph) -> None:
    """A run-time quantized activation with several users gets its own chain per user."""
    chains = []
    for match in find_matches(graph, _DYNAMIC_QUANT_CHAIN):
        if len(match["a_dequant"].uses()) > 1:
            chains.append((match.node("a_scale"), match.node("a_quant"), match.node("a_dequant")))
    for _, quant, dequant in chains:
        value, dtype = quant.inputsAt(0), quant.inputsAt(3)
        dequantized = dequant.output()
        for use in list(dequantized.uses()):
            new = NodeBuilder(graph, before=use.user).choose_qparams_quant_dequant(value, dtype, quant.kind())
            use.user.replaceInputWith(dequantized, new.output())
    for choose, quant, dequant in chains:
        _destroy([dequant, quant, choose])


def _clamp_bound_use(value: Value) -> bool:
    return any(aten_name(u.user) in CLAMP_ATEN and u.offset in (1, 2) for u in value.uses())


def replicate_clamp_scalar_args(graph: Graph) -> None:
    """A clamp bound that has other uses too is copied for each use, so it can be quantized alone."""
    shared: dict[Node, None] = {}
    for node in _stack_order_nodes(graph):
        for output in outputs_of(node):
            if _clamp_bound_use(output) and len(output.uses()) > 1:
                shared.setdefault(node, None)
    for node in shared:
        for use in list(node.output().uses()):
            clone = graph.createClone(node, lambda v: v)
            clone.insertBefore(use.user)
            use.user.replaceInput(use.offset, clone.output())
    _destroy(list(shared))


def _quantized_source(value: Value, block: Block) -> Value | None:
    """The quantized tensor ``value`` dequantizes, when ``value`` is a single-use dequantize in ``block``."""
    node = value.node()
    if node.kind() == "aten::dequantize" and node.owningBlock() == block and len(value.uses()) == 1:
        return node.inputsAt(0)
    return None


def carry_quantized_through_loop(graph: Graph, loop: Node) -> list[int]:
    """Let ``loop`` carry quantized tensors where both the entry and the back edge are dequantized.

    Step 5 for ``prim::Loop`` (observer insertion observes such carried
    values on entry and on the back edge)::

        %x.dq = aten::dequantize(%x.q)
        %y = prim::Loop(%n, %true, %x.dq)
          block0(%i, %c):
            ... uses of %c ...
            %b.dq = aten::dequantize(%b.q)
            -> (%true, %b.dq)
        ... uses of %y ...
      becomes
        %y = prim::Loop(%n, %true, %x.q)
          block0(%i, %c):
            %c.dequant.k = aten::dequantize(%c)     (one per use)
            ... uses of %c.dequant.k ...
            -> (%true, %b.q)
        %y.dequant.k = aten::dequantize(%y)         (one per use)

    Each quantized tensor keeps its own qparams, so the entry and the back
    edge need not agree. Returns the indices of the carried values rewritten.
    """
    body = next(loop.blocks())
    outer = loop.owningBlock()
    params = inputs_of(body)
    returned = outputs_of(body)
    rewritten = []
    for index in range(1, len(params)):
        param, back = params[index], returned[index]
        entry = loop.inputsAt(index + 1)
        entry_q = _quantized_source(entry, outer)
        if entry_q is None or not param.type().isSubtypeOf(_TENSOR):
            continue
        back_q = param if back == param else _quantized_source(back, body)
        if back_q is None:
            continue
        loop.replaceInput(index + 1, entry_q)
        _destroy([entry.node()])
        if back != param:
            body.returnNode().replaceInput(index, back_q)
            _destroy([back.node()])
        for use in list(param.uses()):
            if use.user == body.returnNode():
                continue
            dequant = NodeBuilder(graph, before=use.user).dequantize(param, param, len(rewritten))
            use.user.replaceInput(use.offset, dequant.output())
        insert_dequantize_per_use(graph, loop.outputsAt(index - 1), loop.outputsAt(index - 1))
        rewritten.append(index)
    return rewritten


def _dequantized_inputs(value: Value) -> list[Value] | None:
    inputs = pass_through_inputs(value)
    if inputs and all(v.node().kind() == "aten::dequantize" for v in inputs):
        return inputs
    return None


def _is_after(a: Node, b: Node) -> bool:
    if a.kind() == "prim::Param":
        return False
    if b.kind() == "prim::Param":
        return True
    return a.isAfter(b)


class _Propagator:
    """Step 5 of the module docstring over one graph; remembers values it requantized."""

    def __init__(self, graph: Graph, debug: bool):
        self.graph = graph
        self.debug = debug
        self.quantized: set[Value] = set()

    def block(self, block: Block) -> None:
        for node in list(block.nodes()):
            self.node(node)

    def node(self, node: Node) -> None:
        if node.kind() == "prim::Loop":
            carry_quantized_through_loop(self.graph, node)
            self.block(next(node.blocks()))
            return
        if node.kind() == "prim::If":
            for block in nested_blocks(node):
                self.block(block)
            if node.outputsSize() != 1:
                return
        name = aten_name(node)
        if name in GENERAL_VALUE_ATEN or is_binary_with_scalar(node):
            for output in outputs_of(node):
                if output in self.quantized:
                    continue
                inputs = _dequantized_inputs(output)
                if inputs is not None:
                    self.requantize(output, inputs)
                    if name in CLAMP_ATEN:
                        for bound in (1, 2):
                            self.requantize(node.inputsAt(bound), inputs, scalar=True)
                    if self.debug and is_binary_with_scalar(node):
                        # Only a tensor op on a quantized input is concerned, not int arithmetic.
                        warnings.warn(
                            "debug=True does not model add/mul with a scalar exactly: the quantized kernels "
                            "choose their output qparams from the input's, which the debug graph does not encode",
                            stacklevel=2,
                        )
        elif name in FIXED_QPARAMS:
            for output in outputs_of(node):
                if output in self.quantized:
                    continue
                inputs = _dequantized_inputs(output)
                if inputs is not None:
                    self.requantize(output, inputs, fixed=FIXED_QPARAMS[name])
        else:
            dequantized: dict[Value, None] = {}
            outputs = []
            for output in outputs_of(node):
                if output in self.quantized:
                    continue
                inputs = _dequantized_inputs(output)
                if inputs is not None:
                    dequantized.update(dict.fromkeys(inputs))
                    outputs.append(output)
            for value in dequantized:
                if len(value.uses()) != 1:
                    raise RuntimeError(f"expected one use of the dequantized value %{value.debugName()}")
                dequant = value.node()
                value.replaceAllUsesWith(dequant.inputsAt(0))
                _destroy([dequant])
            for output in outputs:
                insert_dequantize_per_use(self.graph, output, output)

    def requantize(self, output: Value, inputs: list[Value], *, scalar: bool = False, fixed=None) -> None:
        """Quantize ``output`` (of a general value op) with its input's or fixed qparams, then dequantize per use."""
        graph = self.graph
        node = output.node()
        if scalar:
            node = self.scalar_to_tensor(output)
            output = node.output()
        if len(inputs) != 1:
            raise RuntimeError("expected a single quantized input for a general value op")
        quantized_input = inputs[0].node().inputsAt(0)
        producer = quantized_input.node()
        builder = NodeBuilder(graph, after=producer if _is_after(producer, node) else node)
        if fixed is not None:
            quant_inputs = [output]
            for suffix, value in zip((".scale", ".zero_point", ".scalar_type"), fixed):
                constant = builder.constant(value)
                constant.setDebugName(f"{quantized_input.debugName()}{suffix}")
                quant_inputs.append(constant)
        else:
            scale = builder.op(
                "aten::q_scale", [quantized_input], name=f"{quantized_input.debugName()}.q_scale", type_=_FLOAT
            )
            zero_point = builder.op(
                "aten::q_zero_point", [quantized_input], name=f"{quantized_input.debugName()}.q_zero_point", type_=_INT
            )
            dtype = builder.op(
                "prim::dtype", [quantized_input], name=f"{quantized_input.debugName()}.dtype", type_=_INT
            )
            quant_inputs = [output, scale.output(), zero_point.output(), dtype.output()]
        quant = builder.op("aten::quantize_per_tensor", quant_inputs, name=f"{output.debugName()}.quant", type_=_TENSOR)
        output.replaceAllUsesAfterNodeWith(quant, quant.output())
        for dequantized in insert_dequantize_per_use(graph, quant.output(), quant.output()):
            if scalar:
                item = NodeBuilder(graph, after=dequantized.node()).op(
                    "aten::item", [dequantized], name=f"{dequantized.debugName()}.scalar", type_=_FLOAT
                )
                dequantized.replaceAllUsesAfterNodeWith(item, item.output())
                dequantized = item.output()
            self.quantized.add(dequantized)

    def scalar_to_tensor(self, scalar: Value) -> Node:
        """``aten::scalar_tensor(scalar, float)`` right after the scalar's definition, used from there on."""
        producer = scalar.node()
        if producer.kind() == "prim::Param":
            anchor = producer.owningBlock().nodes().__next__()
            builder = NodeBuilder(self.graph, before=anchor)
        else:
            builder = NodeBuilder(self.graph, after=producer)
        float_type = builder.constant(torch.float)
        none = builder.constant(None)
        tensor = builder.op(
            "aten::scalar_tensor",
            [scalar, float_type, none, none, none],
            name=f"{scalar.debugName()}.tensor",
            type_=_TENSOR,
        )
        scalar.replaceAllUsesAfterNodeWith(tensor, tensor.output())
        return tensor


def propagate_quantization(graph: Graph, *, debug: bool = False) -> None:
    """Steps 1-6 of the module docstring on an inlined graph, in place."""
    replicate_choose_qparams_quant_dequant(graph)
    rewrite(graph, REDUNDANT_QUANTIZATION)
    replicate_quantize(graph)
    replicate_dequantize(graph)
    replicate_clamp_scalar_args(graph)
    _Propagator(graph, debug).block(graph.block())
    rewrite(graph, REDUNDANT_DEQUANTIZE)

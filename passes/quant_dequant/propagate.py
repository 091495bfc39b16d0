"""Carry quantization through ops that need no observer, on an inlined graph: the steps after insertion.

After observers became quantize / dequantize pairs, the method is inlined
and these steps finish the debug model, in the reference's order (the
sequence is ``passes.composite.quant_dequant_stages``; steps 2 and 3 are the
passes ``replicate_quantize`` and ``replicate_dequantize``):

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

from passes.quant_dequant.loops import carry_quantized_through_loop
from passes.quant_dequant.nodes import choose_qparams_quant_dequant, insert_dequantize_per_use
from qgraph.ir import (
    TENSOR,
    Block,
    Graph,
    Node,
    NodeBuilder,
    Value,
    clone_node,
    erase_nodes,
    nested_blocks,
    outputs_of,
    stack_order,
)
from qgraph.pattern import Match, Rewrite, find_matches, rewrite
from qgraph.quant.observed_values import aten_name, is_binary_with_scalar, is_quantizable, pass_through_inputs
from qgraph.quant.ops import CLAMP_ATEN, FIXED_QPARAMS, GENERAL_VALUE_ATEN, TENSOR_INFO_ATEN
from qgraph.quant.quant_type import QuantType

__all__ = [
    "replicate_choose_qparams_quant_dequant",
    "remove_redundant_quantization",
    "replicate_clamp_scalar_args",
    "propagate_quantization",
    "remove_redundant_dequantize",
]

_FLOAT = torch._C.FloatType.get()
_INT = torch._C.IntType.get()

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
            new = choose_qparams_quant_dequant(NodeBuilder(graph, before=use.user), value, dtype, quant.kind())
            use.user.replaceInputWith(dequantized, new.output())
    erase_nodes([node for choose, quant, dequant in chains for node in (dequant, quant, choose)])


def _clamp_bound_use(value: Value) -> bool:
    return any(aten_name(u.user) in CLAMP_ATEN and u.offset in (1, 2) for u in value.uses())


def replicate_clamp_scalar_args(graph: Graph) -> None:
    """A clamp bound that has other uses too is copied for each use, so it can be quantized alone."""
    shared: dict[Node, None] = {}
    for node in stack_order(graph):
        for output in outputs_of(node):
            if _clamp_bound_use(output) and len(output.uses()) > 1:
                shared.setdefault(node, None)
    for node in shared:
        for use in list(node.output().uses()):
            clone = clone_node(graph, node, lambda v: v)
            clone.insertBefore(use.user)
            use.user.replaceInput(use.offset, clone.output())
    erase_nodes(list(shared))


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
            self.block(nested_blocks(node)[0])
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
                erase_nodes([dequant])
            for output in outputs:
                insert_dequantize_per_use(self.graph, output, output)

    def requantize(
        self, output: Value, inputs: list[Value], *, scalar: bool = False, fixed: tuple | None = None
    ) -> None:
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
        quant = builder.op("aten::quantize_per_tensor", quant_inputs, name=f"{output.debugName()}.quant", type_=TENSOR)
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
            type_=TENSOR,
        )
        scalar.replaceAllUsesAfterNodeWith(tensor, tensor.output())
        return tensor


def remove_redundant_quantization(graph: Graph) -> int:
    """Step 1, second half: a run-time quantization chain whose single user is not dynamically quantized goes."""
    return rewrite(graph, REDUNDANT_QUANTIZATION)


def propagate_quantization(graph: Graph, *, debug: bool = False) -> None:
    """Step 5: general ops whose inputs are dequantized values run on the quantized tensors; in place.

    With ``debug`` (the model convert returns for ``debug=True``), an
    add / mul with a scalar on a quantized input warns that the debug graph
    does not model its output qparams exactly.
    """
    _Propagator(graph, debug).block(graph.block())


def remove_redundant_dequantize(graph: Graph) -> int:
    """Step 6: a dequantize whose only user reads tensor metadata (size, len, dim, numel) goes."""
    return rewrite(graph, REDUNDANT_DEQUANTIZE)

"""Step 5 of the propagation: general ops whose inputs are dequantized values run on the quantized tensors.

- value ops (avg pooling, mean, upsample, clamp, hardtanh, leaky_relu,
  add/mul with a scalar) are requantized with their input's qparams
  (``aten::q_scale`` / ``aten::q_zero_point`` / ``prim::dtype`` of the
  quantized input); a clamp's scalar bounds are quantized the same way, so
  the float op sees bounds rounded like the quantized kernel's;
- fixed-range ops (sigmoid, hardsigmoid, tanh) are requantized with their
  fixed qparams;
- shape ops (max pooling, flatten, view, relu, ``if`` with one output,
  tuple / list construct and unpack, ...) take the quantized input directly
  and their outputs get a dequantize per use;
- a loop carries quantized tensors where the entry and the back edge are
  both quantized (``loops.py``).

``propagate.py`` lists the steps before and after this one.
"""

from __future__ import annotations

import warnings

import torch

from passes.quant_dequant.loops import carry_quantized_through_loop
from passes.quant_dequant.nodes import insert_dequantize_per_use
from qgraph.ir import TENSOR, Block, Graph, Node, NodeBuilder, Value, erase_nodes, nested_blocks, outputs_of
from qgraph.quant.observed_values import aten_name, is_binary_with_scalar, pass_through_inputs
from qgraph.quant.ops import CLAMP_ATEN, FIXED_QPARAMS, GENERAL_VALUE_ATEN

__all__ = ["propagate_quantization"]

_FLOAT = torch._C.FloatType.get()
_INT = torch._C.IntType.get()


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


def propagate_quantization(graph: Graph, *, debug: bool = False) -> None:
    """Step 5: general ops whose inputs are dequantized values run on the quantized tensors; in place.

    With ``debug`` (the model convert returns for ``debug=True``), an
    add / mul with a scalar on a quantized input warns that the debug graph
    does not model its output qparams exactly.
    """
    _Propagator(graph, debug).block(graph.block())

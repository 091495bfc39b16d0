"""Building the plain-integer code the lowering emits: op nodes, typed constants, conversions, packing.

Every builder inserts nodes before one node of the graph and gives them that
node's source range and scope, so errors and the float-op report point at
the model's code. The conversions between float and plain integer tensors
reproduce PyTorch's quantized dtypes without using them::

    quantize (float -> uint8, bit for bit as aten::quantize_per_tensor):
      %t = aten::add(%zero_point_tensor, %x, %inverse_scale)      # zp + x * (1/scale), one fused multiply-add
      %u = aten::to(aten::clamp_(aten::round_(%t), 0, 255), uint8)
    dequantize (uint8 -> float):
      %x = aten::mul_(aten::sub_(aten::to(%u, float32), zero_point), scale)

Weights are packed once, on the first call, for the shape of the input the
op sees then (oneDNN picks the weight layout for that shape; packing without
it can reorder the weights on every call)::

    %packed : Tensor? = prim::GetAttr[name="_onednn_packed_0"](%self)
    %ready = prim::If(aten::__is__(%packed, None))
      block0():
        %new = onednn::qconv_prepack(%weight, %w_scales, ..., aten::size(%x))
        prim::SetAttr[name="_onednn_packed_0"](%self, %new)
        -> (%new)
      block1():
        -> (prim::unchecked_cast(%packed))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from passes.lower_onednn.qparams import QParams
from qgraph.ir import insert_constant, insert_op
from qgraph.ir.graph import Graph, Node, Value

__all__ = ["Emitter", "CHANNELS_LAST", "OPTIONAL_TENSOR"]

TENSOR = torch._C.TensorType.get()
OPTIONAL_TENSOR = torch._C.OptionalType(TENSOR)
_SCALAR_LIST = torch._C.ListType(torch._C.OptionalType(torch._C.NumberType.get()))
_INT_LIST = torch._C.ListType.ofInts()
_FLOAT32, _INT32 = 6, 3  # ScalarType numbers
CHANNELS_LAST = 2  # MemoryFormat number
_PLAIN_SCALAR_TYPE = {torch.uint8: 0, torch.int8: 1, torch.int32: 3}


class Emitter:
    """Inserts nodes before ``before`` in ``graph``, with the source range and scope of ``source``."""

    def __init__(self, graph: Graph, before: Node, source: Node | None = None, created: set[Node] | None = None):
        self.graph = graph
        self.before = before
        self.source = source if source is not None else before
        # Every node built here, so that later stages can tell the lowering's code from the model's.
        self.created = created if created is not None else set()

    def node(self, kind: str, *inputs: Value | Any, types: Sequence[Any] | None = None, outputs: int = 1) -> Node:
        node = insert_op(
            self.graph,
            kind,
            list(inputs),
            before=self.before,
            n_outputs=outputs,
            output_types=types if types is not None else [TENSOR] * outputs,
            source=self.source,
        )
        self.created.add(node)
        return node

    def op(self, kind: str, *inputs: Value | Any, type_: Any = TENSOR) -> Value:
        return self.node(kind, *inputs, types=[type_]).output()

    def constant(self, value: Any) -> Value:
        saved = self.graph.insertPoint()
        self.graph.setInsertPoint(self.before)
        try:
            return insert_constant(self.graph, value)
        finally:
            self.graph.setInsertPoint(saved)

    def scalar_list(self, values: Sequence[float]) -> Value:
        """A ``Scalar?[]`` list (the post-op arguments of the oneDNN ops)."""
        return self.op("prim::ListConstruct", *[float(v) for v in values], type_=_SCALAR_LIST)

    # --- float <-> plain integer ------------------------------------------------------------

    def quantize(self, real: Value, params: QParams, channels_last: bool = False) -> Value:
        """``real`` as the plain integer tensor ``aten::quantize_per_tensor(real, params)`` holds."""
        if channels_last:
            # The element-wise ops keep the layout; changing it on floats costs less than on bytes.
            real = self.op("aten::contiguous", real, CHANNELS_LAST)
        inverse = float(torch.tensor(1.0, dtype=torch.float32) / torch.tensor(params.scale, dtype=torch.float32))
        zero_point = self.constant(torch.tensor(float(params.zero_point)))
        shifted = self.op("aten::add", zero_point, real, inverse)
        rounded = self.op("aten::round_", shifted)
        low, high = params.bounds
        clamped = self.op("aten::clamp_", rounded, low, high)
        return self.to_integer(clamped, params)

    def to_integer(self, value: Value, params: QParams, channels_last: bool = False) -> Value:
        """Whole floats in ``params``' range as its plain integer dtype (channels-last if asked)."""
        memory_format = CHANNELS_LAST if channels_last else None
        # float -> int32 -> uint8 is exact here and converts faster than float -> uint8.
        wide = self.op("aten::to", value, _INT32, False, False, memory_format)
        return self.op("aten::to", wide, _PLAIN_SCALAR_TYPE[params.plain_dtype], False, False, None)

    def dequantize(self, integer: Value, params: QParams) -> Value:
        """The float tensor ``aten::dequantize`` gives for ``integer`` quantized with ``params``."""
        real = self.to_float(integer)
        if params.zero_point:
            real = self.op("aten::sub_", real, params.zero_point, 1)
        return self.op("aten::mul_", real, params.scale)

    def requantize(self, integer: Value, source: QParams, target: QParams, channels_last: bool = False) -> Value:
        """``integer`` (quantized with ``source``) quantized again with ``target``."""
        if source == target and not channels_last:
            return integer
        return self.quantize_units(self.to_float(integer), source, target, channels_last)

    def to_float(self, integer: Value) -> Value:
        return self.op("aten::to", integer, _FLOAT32, False, False, None)

    def quantize_units(self, units: Value, source: QParams, target: QParams, channels_last: bool = False) -> Value:
        """Float ``units`` (integers of ``source``, or averages of them) as integers of ``target``."""
        ratio = source.scale / target.scale
        offset = self.constant(torch.tensor(float(target.zero_point) - source.zero_point * ratio))
        shifted = self.op("aten::add", offset, units, ratio)
        rounded = self.op("aten::round_", shifted)
        low, high = target.bounds
        return self.to_integer(self.op("aten::clamp_", rounded, low, high), target, channels_last)

    # --- packed weights ---------------------------------------------------------------------

    def packed_weight(
        self,
        name: str,
        prepack: str,
        arguments: Sequence[Value | Any] | Callable[[Emitter], Sequence[Value | Any]],
        activation: Value,
    ) -> Value:
        """The weight packed by ``prepack(*arguments, aten::size(activation))`` on the first call, then kept.

        The packed tensor lives in the ``Optional[Tensor]`` attribute ``name``
        of the module (None until the first call). ``arguments`` may be a
        function that builds them, run only on that first call.
        """
        self_value = next(self.graph.inputs())
        read = self.node("prim::GetAttr", self_value, types=[OPTIONAL_TENSOR])
        read.s_("name", name)
        is_none = self.op("aten::__is__", read.output(), self.constant(None), type_=torch._C.BoolType.get())
        branch = self.node("prim::If", is_none)
        first, later = branch.addBlock(), branch.addBlock()
        packing = Emitter(self.graph, first.returnNode(), self.source, self.created)
        built = arguments(packing) if callable(arguments) else arguments
        shape = packing.op("aten::size", activation, type_=_INT_LIST)
        new = packing.op(prepack, *built, shape)
        packing.node("prim::SetAttr", self_value, new, types=[], outputs=0).s_("name", name)
        first.registerOutput(new)
        later.registerOutput(
            Emitter(self.graph, later.returnNode(), self.source, self.created).op("prim::unchecked_cast", read.output())
        )
        return branch.output()

"""What the stages of the oneDNN lowering share while they rewrite one frozen module.

The stages run on the same ``forward`` graph in turn; between them the graph
holds both quantized values (still made by ``aten::quantize_per_tensor``)
and plain integer values the oneDNN ops produce. ``Lowering`` keeps the
parameters of both kinds in one table (rewrites record the values they
create), names the attributes that hold packed weights, and counts the
attribute names in one place so naming stays linear in the model size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from passes.lower_onednn.emit import OPTIONAL_TENSOR, Emitter
from passes.lower_onednn.postops import PostOp
from passes.lower_onednn.qparams import QParams, QuantizedValues
from qgraph.ir import CppModule, method_graph
from qgraph.ir.graph import Graph, Node, Value

__all__ = ["Lowering", "PACKED_PREFIX"]

PACKED_PREFIX = "_onednn_packed_"


@dataclass
class Lowering:
    """The module being lowered, its ``forward`` graph and the parameters of its quantized values."""

    module: CppModule
    values: QuantizedValues = field(default_factory=QuantizedValues)
    packed_names: list[str] = field(default_factory=list)
    # Nodes the lowering built (not the model's own ops).
    created: set[Node] = field(default_factory=set)
    # Integer values that an op needs channels-last (a residual sum's accumulator).
    channels_last: set[Value] = field(default_factory=set)
    # oneDNN ops whose activation the output's integer range applies; the post-op a float output needs.
    range_folded: dict[Node, PostOp] = field(default_factory=dict)

    @property
    def graph(self) -> Graph:
        return method_graph(self.module, "forward")

    def emitter(self, before: Node, source: Node | None = None) -> Emitter:
        return Emitter(self.graph, before, source, self.created)

    def params(self, value: Value) -> QParams | None:
        return self.values.get(value)

    def new_packed_attribute(self) -> str:
        """Register a fresh ``Optional[Tensor]`` attribute (None) for one packed weight; its name."""
        name = f"{PACKED_PREFIX}{len(self.packed_names)}"
        while self.module.hasattr(name):
            name += "_"
        self.module._register_attribute(name, OPTIONAL_TENSOR, None)
        self.packed_names.append(name)
        return name

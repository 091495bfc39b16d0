"""What the stages of the oneDNN lowering share while they rewrite one frozen module.

The stages run on the same ``forward`` graph in turn; between them the graph
holds both quantized values (still made by ``aten::quantize_per_tensor``)
and plain integer values the oneDNN ops produce. ``Lowering`` keeps the
parameters of both kinds in one table (rewrites record the values they
create), names the attributes that hold packed weights, and counts the
attribute names in one place so naming stays linear in the model size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from passes.lower_onednn.emit import OPTIONAL_TENSOR, Emitter
from passes.lower_onednn.postops import PostOp
from passes.lower_onednn.qparams import QParams, QuantizedValues
from qgraph.ir import CppModule, method_graph
from qgraph.ir.graph import Graph, Node, Value
from qgraph.pattern import Match

__all__ = ["Lowering", "PACKED_PREFIX", "output_params", "known_output", "island_filter"]

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

    def known(self, value: Value) -> QParams:
        """The parameters of ``value``, which a rewrite's filter has checked are known."""
        params = self.values.get(value)
        if params is None:
            raise RuntimeError(f"onednn lowering: no quantization parameters for %{value.debugName()}")
        return params

    def new_packed_attribute(self) -> str:
        """Register a fresh ``Optional[Tensor]`` attribute (None) for one packed weight; its name."""
        name = f"{PACKED_PREFIX}{len(self.packed_names)}"
        while self.module.hasattr(name):
            name += "_"
        self.module._register_attribute(name, OPTIONAL_TENSOR, None)
        self.packed_names.append(name)
        return name


def output_params(match: Match) -> QParams | None:
    """The literal parameters of the island's output quantize, or None when they are not constants."""
    scale, zero_point, dtype = (match.constant(n, None) for n in ("scale", "zero_point", "dtype"))
    if not isinstance(scale, float) or not isinstance(zero_point, int) or dtype not in (12, 13):
        return None
    return QParams(scale, zero_point, dtype)


def known_output(match: Match) -> QParams:
    """``output_params`` of a match whose filter has checked they are literal."""
    params = output_params(match)
    if params is None:
        raise RuntimeError("onednn lowering: an island's output parameters are not constants")
    return params


def island_filter(lowering: Lowering, extra: Callable[[Match], bool] | None = None) -> Callable[[Match], bool]:
    """A filter: the input has known parameters, the output literal ones, and ``extra`` (if given) agrees."""

    def check(match: Match) -> bool:
        if lowering.params(match["x_q"]) is None or output_params(match) is None:
            return False
        return extra is None or extra(match)

    return check

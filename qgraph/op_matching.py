"""Which value of the float model a quantized op's output is to be compared with (``qgraph.compare``'s rules).

``compared_sites`` lists the values of a converted (or ``debug=True``)
graph to compare; ``Matcher`` finds, for each, the float model's values it
may be, by module path, source range and op family, in program order. The
rules are in ``qgraph.compare``'s docstring.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from qgraph.ir import Graph, Node, Value, module_path_of, outputs_of, source_text, strip_serialized, walk
from qgraph.quant.quantized_values import quantized_values

__all__ = ["TRACED_FRAME", "Matcher", "Site", "compared_sites"]

_QUANTIZE = frozenset({"aten::quantize_per_tensor", "aten::quantize_per_channel"})
# Ops that run on quantized tensors and only move, select or clip values: no rounding of their own.
_SAME_VALUES = frozenset(
    f"aten::{name}"
    for name in (
        "flatten reshape view view_as transpose permute contiguous chunk squeeze unsqueeze repeat "
        "repeat_interleave __getitem__ dropout detach relu max_pool1d max_pool2d max_pool3d "
        "adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d max min sort stack select slice narrow "
        "split expand expand_as t numpy_T to clone dequantize q_scale q_zero_point size dim len numel "
        "int_repr"
    ).split()
)
_KERNEL_SUFFIXES = re.compile(r"(_rowwise_offsets|_byte|_4bit|_scalar|_relu6?|_dynamic|_fp16|_out)+$")
_FAMILIES = {
    "_convolution": "conv",
    "conv1d": "conv",
    "conv2d": "conv",
    "conv3d": "conv",
    "conv_transpose1d": "conv",
    "conv_transpose2d": "conv",
    "conv_transpose3d": "conv",
    "addmm": "linear",
    "batch_norm1d": "batch_norm",
    "batch_norm2d": "batch_norm",
    "batch_norm3d": "batch_norm",
}


def _family(kind: str) -> str:
    """``aten::conv2d`` and ``quantized::conv2d_relu`` -> ``conv``; ``aten::add_`` -> ``add``."""
    namespace, _, name = kind.partition("::")
    if namespace == "quantized":
        name = _KERNEL_SUFFIXES.sub("", name.removeprefix("quantized_"))
    elif name.startswith("quantized_"):  # aten::quantized_lstm, aten::quantized_gru
        name = name.removeprefix("quantized_")
    name = name.rstrip("_") if not name.startswith("_") else name
    return _FAMILIES.get(name, name)


# The first line of a traced node's source range: "model.py(12): forward".
TRACED_FRAME = re.compile(r"^[^\n]+\(\d+\): ")


def _source_key(node: Node) -> str:
    text = strip_serialized(source_text(node))
    first = text.split("\n", 1)[0]
    # A traced node's source range is the Python stack when it was traced:
    # its innermost frame says where the op is, the rest where tracing was called.
    if TRACED_FRAME.match(first):
        return first
    return text


@dataclass(frozen=True)
class Site:
    """A value of the quantized graph to compare, and where its float value comes from."""

    value: Value
    kind: str  # what the record calls the op
    origin: Node | None  # the node standing for the float op (None: a model input)
    input_index: int  # for a model input: its position among forward's inputs (self excluded)
    fused_relu: bool
    where: Node | None = None  # the node whose module and source the record names (default: origin)


class _Groups:
    """Nodes of one graph by (module path, source range, op family), in program order."""

    def __init__(self, graph: Graph, with_paths: bool):
        self.with_paths = with_paths
        self.members: dict[tuple[str, str, str], list[Node]] = {}
        for node in walk(graph):
            key = self.key(node)
            if key is not None:
                self.members.setdefault(key, []).append(node)

    def key(self, node: Node) -> tuple[str, str, str] | None:
        kind = node.kind()
        if kind.startswith("prim::") or kind in _QUANTIZE or kind == "aten::dequantize":
            return None
        source = _source_key(node)
        if not source:
            return None
        return (module_path_of(node) if self.with_paths else "", source, _family(kind))


class Matcher:
    def __init__(self, float_graph: Graph, quantized_graph: Graph):
        with_paths = any(module_path_of(node) for node in walk(quantized_graph))
        self.float_graph = float_graph
        self.float_groups = _Groups(float_graph, with_paths)
        self.quantized_groups = _Groups(quantized_graph, with_paths)

    def float_nodes(self, origin: Node) -> list[Node]:
        """The float ops ``origin`` may stand for: one, or those of a group rule 3 could not pair."""
        key = self.quantized_groups.key(origin)
        if key is None:
            return []
        candidates = self.float_groups.members.get(key, [])
        ours = self.quantized_groups.members[key]
        if len(candidates) == len(ours):
            return [candidates[ours.index(origin)]]
        return candidates

    def float_values(self, site: Site) -> list[tuple[Value, Node | None]]:
        """The float model's values that may be ``site``'s, each with the float op it comes from.

        More than one when the groups do not pair up (a quantized graph whose
        ``if`` was folded away by freezing, the float one with both branches):
        the one the float model computed is taken when the models run.
        """
        if site.origin is None:
            inputs = list(self.float_graph.inputs())
            return [(inputs[site.input_index + 1], None)] if site.input_index + 1 < len(inputs) else []
        found: list[tuple[Value, Node | None]] = []
        for node in self.float_nodes(site.origin):
            if not outputs_of(node):
                continue
            value = node.outputsAt(0)
            if _family(node.kind()) == "conv":
                value = self._past_folded_batch_norm(value)
            if site.fused_relu:
                value = _past_sole_user(value, "relu") or value
            if value.type().kind() == "TensorType":
                found.append((value, node))
        return found

    def _past_folded_batch_norm(self, value: Value) -> Value:
        after = _past_sole_user(value, "batch_norm")
        if after is None:
            return value
        batch_norm = after.node()
        # Folded means gone: a BatchNorm the quantized graph still runs was not folded.
        key = self.float_groups.key(batch_norm)
        if key is not None and key in self.quantized_groups.members:
            return value
        return after


def _past_sole_user(value: Value, family: str) -> Value | None:
    # Shape and type checks (``input.dim()`` in BatchNorm's forward) read the value without using its data.
    users = {use.user for use in value.uses() if any(_carries_tensor(v) for v in outputs_of(use.user))}
    if len(users) != 1:
        return None
    user = users.pop()
    if _family(user.kind()) != family or user.inputsAt(0) != value:
        return None
    return user.output() if user.outputsSize() == 1 else user.outputsAt(0)


def _carries_tensor(value: Value) -> bool:
    return "Tensor" in str(value.type())


def _is_weight(value: Value) -> bool:
    return value.node().kind() in ("prim::GetAttr", "prim::Constant")


def _first_tensor(node: Node) -> Value | None:
    return next((v for v in outputs_of(node) if v.type().kind() == "TensorType"), None)


def _input_site(quantize: Node, kind: str) -> Site | None:
    """A quantize of an activation stands for the op producing it (or for a model input)."""
    source = quantize.inputsAt(0)
    if _is_weight(source) or source.type().kind() != "TensorType":
        return None
    producer = source.node()
    if producer.kind() == "prim::Param":
        if producer.owningBlock().owningNode() is not None:
            return None  # a loop-carried value: no single float value stands for it
        return Site(quantize.output(), kind, None, source.offset() - 1, False)
    return Site(quantize.output(), kind, producer, -1, False)


def compared_sites(graph: Graph) -> list[Site]:
    """The values of a converted graph to compare (see the module docstring)."""
    kinds = {node.kind() for node in walk(graph)}
    debug = not any(k.startswith(("quantized::", "aten::quantized_")) for k in kinds)
    sites: list[Site] = []
    if debug:
        for node in walk(graph):
            if node.kind() in _QUANTIZE:
                site = _input_site(node, node.kind())
                if site is not None:
                    sites.append(_debug_site(site))
        return sites
    quantized = quantized_values(graph)
    for node in walk(graph):
        kind = node.kind()
        if kind in _QUANTIZE:
            site = _input_site(node, kind)
        elif kind.startswith(("quantized::", "aten::quantized_")):
            if kind.endswith(("_prepack", "_unpack")):
                continue
            value = _first_tensor(node)
            site = None if value is None else Site(value, kind, node, -1, "_relu" in kind)
        elif kind.startswith("aten::") and kind not in _SAME_VALUES:
            value = _first_tensor(node)
            site = Site(value, kind, node, -1, False) if value is not None and value in quantized else None
        else:
            site = None
        if site is not None:
            sites.append(site)
    return sites


_DELAYED_FIRST = frozenset({"conv", "linear", "add", "mul", "batch_norm"})


def _debug_site(site: Site) -> Site:
    """Name a debug model's quantize after the op it quantizes (a conv for a conv's relu)."""
    origin = site.origin
    if origin is None:
        return site
    kind = origin.kind()
    if _family(kind) == "relu" and origin.inputsSize() > 0:
        before = origin.inputsAt(0)
        if _family(before.node().kind()) in _DELAYED_FIRST and len({u.user for u in before.uses()}) == 1:
            return Site(site.value, f"{before.node().kind()}+relu", origin, -1, False, before.node())
    return Site(site.value, kind, origin, -1, False)

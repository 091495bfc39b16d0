"""Pictures of a model's graph: SVG through Graphviz's ``dot``.

``draw(model, "graph.svg")`` draws ``forward`` of a TorchScript model at any
stage (float, prepared, ``debug=True``, quantized) as one dataflow graph: the
method calls on submodules are drawn inline, so every op of every submodule
is a node, labelled with its op kind and its module path. Colours tell what
quantization made of each op:

- green: quantized ops (``quantized::*`` kernels, and aten ops computing on
  quantized tensors, such as pooling on a quantized input);
- orange: quantize / dequantize;
- blue: observers (a prepared model's ``_observer_N`` calls), one node each;
- grey: ops that run in float;
- white: the model's inputs and outputs; ``if`` branches and loop bodies
  are boxes.

Constants, attribute reads and list/tuple packing are not drawn: edges go
from the op that produced a value to each op that reads it. A frozen model
(what ``convert_jit`` returns) is already one graph; its module paths come
from the call stacks freezing kept (a model loaded from a file has none).

Rendering needs the ``dot`` program of Graphviz (Debian / Ubuntu:
``apt-get install graphviz``; macOS: ``brew install graphviz``); without it
``draw`` raises ``GraphvizNotFound`` saying so. ``to_dot`` gives the DOT text
without rendering.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import graphviz

from qgraph.ir import (
    Block,
    CppModule,
    Graph,
    Node,
    Value,
    as_cpp,
    getattr_path,
    inputs_of,
    method_graph,
    module_path_of,
    nested_blocks,
    outputs_of,
    resolve_path,
)
from qgraph.pipeline import DUMP_PICTURES
from qgraph.quant.quantized_values import quantized_values

__all__ = ["CATEGORIES", "GraphvizNotFound", "Picture", "draw", "picture", "to_dot", "write_svg"]

QUANTIZED = "quantized op"
QUANTIZE = "quantize / dequantize"
OBSERVER = "observer"
FLOAT = "float op"
# Category -> fill colour.
CATEGORIES = {QUANTIZED: "#9ad19a", QUANTIZE: "#f6c26b", OBSERVER: "#8fb8e8", FLOAT: "#dddddd"}

_QUANTIZE_KINDS = frozenset(
    {
        "aten::quantize_per_tensor",
        "aten::quantize_per_channel",
        "aten::quantize_per_tensor_dynamic",
        "aten::dequantize",
        "aten::_choose_qparams_per_tensor",
    }
)
# Nodes not drawn: their outputs stand for their inputs (packing) or for nothing (constants, attributes).
_SEE_THROUGH = frozenset(
    {
        "prim::ListConstruct",
        "prim::TupleConstruct",
        "prim::ListUnpack",
        "prim::TupleUnpack",
        "prim::TupleIndex",
        "prim::unchecked_cast",
        "aten::__getitem__",
    }
)
_HIDDEN = frozenset({"prim::Constant", "prim::GetAttr", "prim::Uninitialized", "prim::RaiseException"})
_OBSERVER_PREFIX = "_observer_"


class GraphvizNotFound(RuntimeError):
    """Graphviz's ``dot`` program is not installed."""


def _category(node: Node, quantized: set[Value]) -> str:
    kind = node.kind()
    if kind in _QUANTIZE_KINDS:
        return QUANTIZE
    if kind.startswith(("quantized::", "aten::quantized_")):
        return QUANTIZED
    if any(value in quantized for value in outputs_of(node)):
        return QUANTIZED
    return FLOAT


@dataclass
class _Drawing:
    """The DOT graph being built and where each value of the walked graphs comes from."""

    dot: graphviz.Digraph
    counts: dict[str, int] = field(default_factory=dict)
    next_id: int = 0
    quantized: set[Value] = field(default_factory=set)

    def new_id(self) -> str:
        self.next_id += 1
        return f"n{self.next_id}"

    def add(self, target: graphviz.Digraph, label: str, category: str | None, **attributes: str) -> str:
        node_id = self.new_id()
        if category is not None:
            self.counts[category] = self.counts.get(category, 0) + 1
            attributes = {"style": "filled", "fillcolor": CATEGORIES[category], **attributes}
        target.node(node_id, label, **attributes)
        return node_id


# Producers of a value: the drawn nodes it comes from (several through a list or tuple).
_Env = dict[Value, list[str]]


def _label(kind: str, path: str) -> str:
    return f"{kind}\n{path}" if path else kind


class _Walker:
    def __init__(self, drawing: _Drawing):
        self.drawing = drawing

    def block(self, block: Block | Graph, env: _Env, module: CppModule, path: str, target: graphviz.Digraph) -> None:
        nodes = block.nodes()
        for node in nodes:
            self.node(node, env, module, path, target)

    def sources(self, value: Value, env: _Env) -> list[str]:
        return env.get(value, [])

    def connect(self, node_id: str, inputs: list[Value], env: _Env, target: graphviz.Digraph) -> None:
        seen: set[str] = set()
        for value in inputs:
            for source in self.sources(value, env):
                if source not in seen:
                    seen.add(source)
                    target.edge(source, node_id)

    def node(self, node: Node, env: _Env, module: CppModule, path: str, target: graphviz.Digraph) -> None:
        kind = node.kind()
        if kind in _HIDDEN:
            return
        if kind in _SEE_THROUGH:
            merged = [source for value in inputs_of(node) for source in self.sources(value, env)]
            for output in outputs_of(node):
                env[output] = merged
            return
        if kind == "prim::CallMethod" and self.call(node, env, module, path, target):
            return
        if kind in ("prim::If", "prim::Loop"):
            self.control(node, env, module, path, target)
            return
        node_path = ".".join(p for p in (path, module_path_of(node)) if p)
        if kind == "prim::CallFunction":
            label = _label(f"call {str(node.inputsAt(0).type()).rsplit('.', 1)[-1]}", node_path)
            category = FLOAT
        else:
            label, category = _label(kind, node_path), _category(node, self.drawing.quantized)
        node_id = self.drawing.add(target, label, category)
        self.connect(node_id, inputs_of(node), env, target)
        for output in outputs_of(node):
            env[output] = [node_id]

    def call(self, node: Node, env: _Env, module: CppModule, path: str, target: graphviz.Digraph) -> bool:
        receiver = getattr_path(node.inputsAt(0))
        if receiver is None:
            return False
        callee = resolve_path(module, receiver)
        if not isinstance(callee, CppModule):
            return False
        callee_path = ".".join(p for p in (path, *receiver) if p)
        arguments = inputs_of(node)[1:]
        if receiver and receiver[-1].startswith(_OBSERVER_PREFIX):
            observer_class = callee._type().qualified_name().rsplit(".", 1)[-1]
            node_id = self.drawing.add(target, _label(f"observer {observer_class}", callee_path), OBSERVER)
            self.connect(node_id, arguments, env, target)
            for output in outputs_of(node):
                env[output] = [node_id]
            return True
        graph = method_graph(callee, node.s("name"))
        callee_env: _Env = {}
        for param, argument in zip(inputs_of(graph)[1:], arguments):
            callee_env[param] = self.sources(argument, env)
        self.drawing.quantized |= quantized_values(graph)
        self.block(graph, callee_env, callee, callee_path, target)
        for output, returned in zip(outputs_of(node), outputs_of(graph)):
            env[output] = self.sources(returned, callee_env)
        return True

    def control(self, node: Node, env: _Env, module: CppModule, path: str, target: graphviz.Digraph) -> None:
        kind = node.kind()
        node_path = ".".join(p for p in (path, module_path_of(node)) if p)
        node_id = self.drawing.add(target, _label(kind, node_path), None, shape="diamond")
        self.connect(node_id, inputs_of(node), env, target)
        results: list[list[str]] = [[node_id] for _ in outputs_of(node)]
        for index, block in enumerate(nested_blocks(node)):
            name = ("then", "else")[index] if kind == "prim::If" else "body"
            with target.subgraph(name=f"cluster_{self.drawing.new_id()}") as box:
                box.attr(label=f"{kind.removeprefix('prim::').lower()} {name}", style="rounded", color="#888888")
                block_env = dict(env)
                for param in inputs_of(block):
                    block_env[param] = [node_id]
                self.block(block, block_env, module, path, box)
                for result, returned in zip(results, outputs_of(block)):
                    result.extend(s for s in self.sources(returned, block_env) if s not in result)
        for output, sources in zip(outputs_of(node), results):
            env[output] = sources


def to_dot(model: Any, method: str = "forward") -> str:
    """The DOT text of ``model.<method>``, drawn as the module docstring says."""
    return _build(model, method).dot.source


def _build(model: Any, method: str) -> _Drawing:
    module: Any = as_cpp(model)
    if method not in module._method_names():
        raise ValueError(f"the model has no method {method!r} to draw")
    graph = method_graph(module, method)
    dot = graphviz.Digraph(
        "qgraph",
        graph_attr={"rankdir": "TB", "fontname": "Helvetica", "fontsize": "10"},
        node_attr={"shape": "box", "fontname": "Helvetica", "fontsize": "10", "style": "rounded"},
        edge_attr={"arrowsize": "0.6"},
    )
    drawing = _Drawing(dot, quantized=quantized_values(graph))
    env: _Env = {}
    for index, value in enumerate(inputs_of(graph)[1:]):
        env[value] = [drawing.add(dot, f"input {index}: {value.debugName()}", None, shape="ellipse")]
    _Walker(drawing).block(graph, env, module, "", dot)
    for index, value in enumerate(outputs_of(graph)):
        output_id = drawing.add(dot, f"output {index}", None, shape="ellipse")
        for source in env.get(value, []):
            dot.edge(source, output_id)
    with dot.subgraph(name="cluster_legend") as legend:
        legend.attr(label="legend", style="rounded", color="#888888")
        for category, colour in CATEGORIES.items():
            legend.node(f"legend_{category}", category, style="filled", fillcolor=colour)
    return drawing


@dataclass(frozen=True)
class Picture:
    """An SVG drawing and how many nodes of each category it shows."""

    svg: str
    counts: dict[str, int]


def picture(model: Any, method: str = "forward") -> Picture:
    """``model.<method>`` drawn; GraphvizNotFound without Graphviz's ``dot``."""
    drawing = _build(model, method)
    try:
        svg = drawing.dot.pipe(format="svg", encoding="utf-8")
    except graphviz.ExecutableNotFound:
        raise GraphvizNotFound(
            "drawing needs the dot program of Graphviz, which is not installed: install the graphviz system package "
            "(Debian/Ubuntu: apt-get install graphviz; macOS: brew install graphviz)"
        ) from None
    counts = {category: drawing.counts[category] for category in CATEGORIES if category in drawing.counts}
    return Picture(svg, counts)


def write_svg(module: CppModule, path: str) -> None:
    """``draw`` for a ``torch._C.ScriptModule`` (the pipeline's per-stage pictures)."""
    with open(path, "w", encoding="utf-8") as out:
        out.write(picture(module).svg)


def draw(model: Any, path: str | os.PathLike, method: str = "forward") -> str:
    """Write ``model.<method>`` as an SVG picture to ``path``; returns the path written."""
    drawn = picture(model, method)
    destination = os.fspath(path)
    with open(destination, "w", encoding="utf-8") as out:
        out.write(drawn.svg)
    return destination


DUMP_PICTURES[".svg"] = write_svg

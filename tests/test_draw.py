"""qgraph.draw: the graph as SVG, op categories in their colours, module paths on the nodes; inspect(svg=True)."""

import shutil
import xml.etree.ElementTree as ET

import pytest
import torch
from torch import nn
from torch.ao.quantization import MinMaxObserver, QConfig, get_default_qconfig

import qgraph
from qgraph.draw import CATEGORIES, FLOAT, OBSERVER, QUANTIZE, QUANTIZED, GraphvizNotFound, picture, to_dot
from qgraph.pipeline import inspect

needs_dot = pytest.mark.skipif(
    shutil.which("dot") is None, reason="Graphviz's dot is not installed (apt-get install graphviz)"
)
SVG = "{http://www.w3.org/2000/svg}"
QCONFIG = QConfig(activation=MinMaxObserver, weight=get_default_qconfig("x86").weight)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        y = torch.relu(self.conv(x)).mean((2, 3))
        if y.sum() > 0:  # a branch: drawn as a box
            y = y * 2
        return torch.exp(self.head(y))


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    model = torch.jit.script(Net().eval())
    prepared = qgraph.prepare_jit(model, {"": QCONFIG})
    prepared(torch.randn(1, 3, 6, 6))
    return {"float": model, "prepared": prepared, "quantized": qgraph.convert_jit(prepared)}


def drawn_nodes(svg: str) -> dict[str, str]:
    """{label text: fill colour} of every node of an SVG drawing (it must parse)."""
    root = ET.fromstring(svg)
    nodes = {}
    for group in root.iter(f"{SVG}g"):
        if group.get("class") != "node":
            continue
        label = " | ".join(text.text or "" for text in group.iter(f"{SVG}text"))
        shape = next(iter(group.iter(f"{SVG}polygon")), None)
        nodes[label] = shape.get("fill") if shape is not None else ""
    return nodes


def filled(nodes: dict[str, str], category: str) -> list[str]:
    return [
        label for label, fill in nodes.items() if fill == CATEGORIES[category] and label != category
    ]  # not the legend


@needs_dot
def test_a_quantized_model_shows_its_kernels_and_quantize_ops(models, tmp_path):
    path = qgraph.draw(models["quantized"], tmp_path / "quantized.svg")
    nodes = drawn_nodes((tmp_path / "quantized.svg").read_text())
    assert path == str(tmp_path / "quantized.svg")
    assert "quantized::conv2d_relu | conv" in filled(nodes, QUANTIZED)
    assert {"aten::quantize_per_tensor", "aten::dequantize"} <= set(filled(nodes, QUANTIZE))
    assert "aten::exp" in filled(nodes, FLOAT)
    assert len(set(CATEGORIES.values())) == len(CATEGORIES)


@needs_dot
def test_a_prepared_model_shows_one_node_per_observer(models):
    drawn = picture(models["prepared"])
    nodes = drawn_nodes(drawn.svg)
    observers = filled(nodes, OBSERVER)
    assert "observer MinMaxObserver | _observer_2" in observers
    assert any(label.startswith("observer PerChannelMinMaxObserver | conv._observer_") for label in observers)
    assert "aten::conv2d | conv" in filled(nodes, FLOAT)
    assert drawn.counts[OBSERVER] == len(observers)


def test_branches_are_boxes_and_packing_is_not_drawn(models):
    dot = to_dot(models["float"])
    assert 'subgraph "cluster_' in dot or "subgraph cluster_" in dot
    assert 'label="if then"' in dot and "ListConstruct" not in dot and "prim::Constant" not in dot


@needs_dot
def test_inspect_draws_each_stage_beside_its_dump(tmp_path):
    model = torch.jit.script(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()).eval())
    with inspect(dump_dir=tmp_path, svg=True):
        qgraph.prepare_jit(model, {"": QCONFIG})
    dumps = sorted(p.stem for p in tmp_path.glob("*.txt"))
    assert dumps and sorted(p.stem for p in tmp_path.glob("*.svg")) == dumps
    nodes = drawn_nodes((tmp_path / f"{dumps[-1]}.svg").read_text())
    assert filled(nodes, OBSERVER)


def test_inspect_svg_needs_a_dump_dir(monkeypatch):
    monkeypatch.delenv("QGRAPH_DUMP_DIR", raising=False)
    with pytest.raises(ValueError, match="give dump_dir"), inspect(svg=True):
        pass


def test_without_dot_the_error_says_how_to_install_it(models, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(GraphvizNotFound, match=r"apt-get install graphviz"):
        qgraph.draw(models["quantized"], tmp_path / "graph.svg")

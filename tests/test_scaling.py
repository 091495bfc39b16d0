"""prepare and convert do work linear in the model: counted, not timed.

A stack of conv-relu submodules is quantized at two depths, N and 2N, with
counting spies on the IR walking primitives (nodes read from a graph or
block, node indexes built, pattern matches tried, node lists of blocks). A
pass that rescans the graph per match or per submodule reads a number of
nodes that grows with the square of the depth; here every count may at
most a little more than double when the depth doubles. Freezing is PyTorch's
C++ and cannot be counted from Python; what made it quadratic (tensor
attributes folded into constants that are then compared pairwise) is
checked instead: no tensor attribute is left for it to fold.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.ao.quantization import default_qconfig
from torch.ao.quantization import quantize_jit as reference_quantize_jit

import qgraph
import qgraph.pattern
from examples.models import DeepConvStack, calibrate, calibration_batches
from qgraph.ir import NodeIndex

SMALL, LARGE = 12, 24
GROWTH_LIMIT = 2.2


def _count_work(monkeypatch, depth: int) -> Counter:
    counts: Counter = Counter()

    def counting_nodes(original, key):
        def nodes(self):
            found = list(original(self))
            counts[key] += len(found)
            return iter(found)

        return nodes

    monkeypatch.setattr(torch._C.Graph, "nodes", counting_nodes(torch._C.Graph.nodes, "nodes read"))
    monkeypatch.setattr(torch._C.Block, "nodes", counting_nodes(torch._C.Block.nodes, "nodes read"))

    original_blocks = torch._C.Node.blocks

    def blocks(self):
        counts["block lists read"] += 1
        return original_blocks(self)

    monkeypatch.setattr(torch._C.Node, "blocks", blocks)

    original_index = NodeIndex.__init__

    def index_init(self, graph_or_block):
        counts["node indexes built"] += 1
        original_index(self, graph_or_block)

    monkeypatch.setattr(NodeIndex, "__init__", index_init)

    original_match_at = qgraph.pattern.match_at

    def match_at(pattern, anchor):
        counts["matches tried"] += 1
        return original_match_at(pattern, anchor)

    monkeypatch.setattr(qgraph.pattern, "match_at", match_at)

    original_freeze = torch._C._freeze_module

    def freeze_module(module, *args):
        graph = module._get_method("forward").graph
        counts["tensor attributes left to freeze"] += sum(
            1
            for node in graph.findAllNodes("prim::GetAttr", True)
            if node.output().type().kind() in ("TensorType", "OptionalType")
        )
        return original_freeze(module, *args)

    monkeypatch.setattr(torch._C, "_freeze_module", freeze_module)

    torch.manual_seed(0)
    model = torch.jit.script(DeepConvStack(depth).eval())
    prepared = qgraph.prepare_jit(model, {"": default_qconfig})
    calibrate(prepared, calibration_batches((1, 4, 4, 4), 1))
    qgraph.convert_jit(prepared)
    monkeypatch.undo()
    return counts


def test_work_grows_linearly_with_depth(monkeypatch):
    small = _count_work(monkeypatch, SMALL)
    large = _count_work(monkeypatch, LARGE)
    for key in ("nodes read", "node indexes built", "matches tried"):
        assert small[key] > 0, key
        assert large[key] <= GROWTH_LIMIT * small[key], (key, small[key], large[key])
    # Passes ask only prim:: nodes for their blocks, and this model may have
    # none left to ask about once compiled patterns are cached: zero is fine,
    # growth is not.
    assert large["block lists read"] <= GROWTH_LIMIT * small["block lists read"], (
        small["block lists read"],
        large["block lists read"],
    )


def test_freezing_gets_no_tensor_attributes_to_compare(monkeypatch):
    counts = _count_work(monkeypatch, SMALL)
    assert counts["tensor attributes left to freeze"] == 0


@pytest.mark.parametrize("depth", [SMALL, LARGE])
def test_deep_stack_matches_the_reference(depth):
    torch.manual_seed(0)
    model = torch.jit.script(DeepConvStack(depth).eval())
    batches = calibration_batches((1, 4, 4, 4), 2)
    ours = qgraph.quantize_jit(model, {"": default_qconfig}, calibrate, [batches])
    reference = reference_quantize_jit(model, {"": default_qconfig}, calibrate, [batches])
    x = torch.randn(2, 4, 4, 4)
    assert torch.equal(ours(x), reference(x))


def test_list_accessors_agree_with_the_iterators():
    """inputs_of / outputs_of / nested_blocks, which the passes use instead of the costly iterators."""
    from qgraph.ir import inputs_of, nested_blocks, outputs_of

    graph = torch._C.parse_ir(
        """graph(%x : Tensor, %flag : bool):
        %r : Tensor = prim::If(%flag)
          block0():
            %y : Tensor = aten::relu(%x)
            -> (%y)
          block1():
            -> (%x)
        %n : int = prim::Constant[value=3]()
        %t : Tensor = aten::add(%r, %x, %n)
        return (%t, %r)"""
    )
    assert inputs_of(graph) == list(graph.inputs())
    assert outputs_of(graph) == list(graph.outputs())
    for node in graph.nodes():
        assert inputs_of(node) == list(node.inputs())
        assert outputs_of(node) == list(node.outputs())
        assert nested_blocks(node) == list(node.blocks())
        for block in nested_blocks(node):
            assert inputs_of(block) == list(block.inputs())
            assert outputs_of(block) == list(block.outputs())
    if_node = graph.findNode("prim::If")
    assert len(nested_blocks(if_node)) == 2

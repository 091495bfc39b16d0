"""Run PyTorch's own graph-mode quantization steps and compare their results with ours.

Tests use the reference's prepare (observer shape identical to ours) to build
calibrated inputs, the reference's ``_jit_pass_insert_quant_dequant`` as the
oracle, and these comparisons: qparams attributes (names and values), node
kinds of the inlined forward graph, and model outputs (bit for bit).
"""

from __future__ import annotations

import re

import torch
from torch.ao.quantization import prepare_dynamic_jit, prepare_jit
from torch.ao.quantization.quant_type import QuantType

from helpers import models

QPARAM_ATTRIBUTE = re.compile(r"_(scale|zero_point|scalar_type|axis)_\d+$")


def script_or_trace(model: torch.nn.Module, example, tracing: bool) -> torch.jit.ScriptModule:
    return models.capture(model, example, tracing, check_trace=True)


def calibrated(model: torch.jit.ScriptModule, qconfig_dict, data=(), dynamic: bool = False):
    """The reference's prepared model, run once on each input tuple in ``data``."""
    prepared = (prepare_dynamic_jit if dynamic else prepare_jit)(model, qconfig_dict)
    for args in data:
        prepared(*args)
    return prepared


def reference_insert_quant_dequant(prepared, quant_type=QuantType.STATIC) -> torch.jit.ScriptModule:
    converted = torch._C._jit_pass_insert_quant_dequant(prepared._c, "forward", False, True, quant_type)
    return torch.jit._recursive.wrap_cpp_module(converted)


def qparam_attributes(module: torch.jit.ScriptModule) -> dict[str, object]:
    """``"<submodule path>:<attribute>" -> value`` for every qparams attribute in the tree."""
    found = {}
    for path, sub in _named_modules(module._c):
        for name, value in torch._C._jit_debug_module_iterators(sub)["named_attributes"]:
            if QPARAM_ATTRIBUTE.search(name):
                found[f"{path}:{name}"] = value
    return found


def _named_modules(module, prefix=""):
    yield prefix, module
    for name, child in torch._C.ModuleDict(module).items():
        yield from _named_modules(child, f"{prefix}.{name}" if prefix else name)


def assert_same_qparams(ours, reference) -> None:
    mine, theirs = qparam_attributes(ours), qparam_attributes(reference)
    assert sorted(mine) == sorted(theirs)
    for key, value in theirs.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(mine[key], value), key
            assert mine[key].dtype == value.dtype, key
        else:
            assert type(mine[key]) is type(value) and mine[key] == value, key


def node_kinds(graph: torch._C.Graph) -> list[str]:
    """Kinds of every node (nested blocks included, in order) of an inlined, dead-code-free copy."""
    graph = graph.copy()
    torch._C._jit_pass_inline(graph)
    torch._C._jit_pass_dce(graph)
    kinds = []

    def visit(block):
        for node in block.nodes():
            if node.kind() != "prim::Constant":
                kinds.append(node.kind())
            for sub in node.blocks():
                kinds.append("{")
                visit(sub)
                kinds.append("}")

    visit(graph.block())
    return kinds


def observer_children(module: torch.jit.ScriptModule) -> list[str]:
    return [path for path, _ in _named_modules(module._c) if "_observer_" in path]


def assert_same_outputs(a, b) -> None:
    """Equal structure and bit-identical tensors."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor)
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_outputs(x, y)
    else:
        assert a == b

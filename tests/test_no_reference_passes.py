"""qgraph's own code never calls PyTorch's quantization passes.

``qgraph/`` and ``passes/`` may use the generic IR hygiene passes of
``torch._C`` only; PyTorch's quantization passes, its subgraph rewriter and
the ``torch.ao.quantization`` JIT entry points are for tests to compare with.
The check reads the code (not comments or docstrings) of every Python file
of both packages.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import passes
import qgraph

ALLOWED_JIT_PASSES = {
    "_jit_pass_inline",
    "_jit_pass_inline_fork_wait",
    "_jit_pass_dce",
    "_jit_pass_dce_allow_deleting_nodes_with_side_effects",
    "_jit_pass_constant_propagation",
    "_jit_pass_constant_pooling",
    "_jit_pass_lint",
}
REFERENCE_JIT_API = {
    "quantize_jit",
    "prepare_jit",
    "convert_jit",
    "fuse_conv_bn_jit",
    "prepare_dynamic_jit",
    "convert_dynamic_jit",
    "quantize_dynamic_jit",
    "_prepare_jit",
    "_convert_jit",
    "_prepare_ondevice_jit",
    "_convert_ondevice_jit",
}
REFERENCE_PACKAGES = ("torch.ao.quantization", "torch.quantization")
_JIT_PASS = re.compile(r"_jit_pass_\w+")


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _is_reference_package(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in REFERENCE_PACKAGES)


def forbidden_uses(source: str) -> list[str]:
    """Descriptions of every use of a reference pass or JIT entry point in ``source``."""
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    aliases: dict[str, str] = {}  # local name -> reference package it stands for
    found: list[str] = []

    def jit_passes(text: str, line: int) -> None:
        for name in _JIT_PASS.findall(text):
            if name not in ALLOWED_JIT_PASSES:
                found.append(f"line {line}: {name}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.endswith("quantize_jit") and _is_reference_package(alias.name):
                    found.append(f"line {node.lineno}: import {alias.name}")
                elif _is_reference_package(alias.name):
                    aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and _is_reference_package(node.module):
            for alias in node.names:
                if node.module.endswith("quantize_jit") or alias.name in REFERENCE_JIT_API:
                    found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Attribute):
            jit_passes(node.attr, node.lineno)
            owner = _dotted(node.value)
            if owner is not None:
                owner = aliases.get(owner, owner)
                if _is_reference_package(owner) and (node.attr in REFERENCE_JIT_API or owner.endswith("quantize_jit")):
                    found.append(f"line {node.lineno}: {owner}.{node.attr}")
        elif isinstance(node, ast.Name):
            jit_passes(node.id, node.lineno)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            jit_passes(node.value, node.lineno)
    return found


def package_files() -> list[Path]:
    roots = [Path(qgraph.__file__).parent, Path(passes.__file__).parent]
    return sorted(path for root in roots for path in root.rglob("*.py"))


def test_guard_catches_reference_passes():
    source = """
import torch
torch._C._jit_pass_fold_convbn(module)
torch._C._jit_pass_custom_pattern_based_rewrite_graph(a, b, graph)
run = getattr(torch._C, "_jit_pass_insert_observers")
"""
    assert forbidden_uses(source) == [
        "line 3: _jit_pass_fold_convbn",
        "line 4: _jit_pass_custom_pattern_based_rewrite_graph",
        "line 5: _jit_pass_insert_observers",
    ]


def test_guard_catches_the_reference_jit_api_however_it_is_reached():
    source = """
import torch
import torch.ao.quantization as tq
import torch.ao.quantization.quantize_jit
from torch.ao.quantization import prepare_jit, QConfig
from torch.quantization import quantize_dynamic_jit
from torch.ao.quantization.quantize_jit import script_qconfig
torch.ao.quantization.convert_jit(model)
tq.fuse_conv_bn_jit(model)
"""
    assert forbidden_uses(source) == [
        "line 4: import torch.ao.quantization.quantize_jit",
        "line 5: from torch.ao.quantization import prepare_jit",
        "line 6: from torch.quantization import quantize_dynamic_jit",
        "line 7: from torch.ao.quantization.quantize_jit import script_qconfig",
        "line 8: torch.ao.quantization.convert_jit",
        "line 9: torch.ao.quantization.fuse_conv_bn_jit",
    ]


def test_guard_accepts_hygiene_passes_own_names_and_prose():
    source = '''
"""Unlike torch._C._jit_pass_fold_convbn, this folds Conv1d too."""
import torch
from torch.ao.quantization import QConfig, default_qconfig
from torch.ao.quantization.observer import MinMaxObserver


def prepare_jit(model, qconfig_dict, inplace=False):
    """Our prepare_jit; the reference's is torch.ao.quantization.prepare_jit."""
    # torch._C._jit_pass_insert_observers would do this in C++.
    torch._C._jit_pass_inline(graph)
    torch._C._jit_pass_inline_fork_wait(graph)
    torch._C._jit_pass_dce(graph)
    torch._C._jit_pass_constant_propagation(graph)
    torch._C._jit_pass_constant_pooling(graph)
    torch._C._jit_pass_lint(graph)
    torch._C._freeze_module(model._c)
    return convert_jit(model)
'''
    assert forbidden_uses(source) == []


def test_package_files_are_found():
    names = {path.name for path in package_files()}
    assert {"pattern.py", "graph.py", "dedup_module_uses.py"} <= names


@pytest.mark.parametrize("path", package_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_reference_quantization_pass_in(path):
    assert forbidden_uses(path.read_text()) == []

"""The packages import downward only: core, then the quantization domain, then the passes, then the driver.

    driver   qgraph (the package face), qgraph.api, prepare, convert, report, cli, capture
    passes   passes: each pass imports core and domain, never another pass
    domain   qgraph.quant: quantization facts and rules
    core     qgraph.ir, qgraph.pattern, qgraph.pattern_match, qgraph.pipeline,
             qgraph.pipeline_inspection: TorchScript IR, patterns, stages

Two checks: every import statement of the code (at any depth: inside
functions and ``TYPE_CHECKING`` blocks too) and every ``import_module``
call with a literal name is read and must name a module of the same layer
or a lower one; and each layer, imported alone in a fresh interpreter,
must load no module of a layer above it.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE, DOMAIN, PASSES, DRIVER = 0, 1, 2, 3
LAYER_NAMES = {CORE: "core", DOMAIN: "domain", PASSES: "passes", DRIVER: "driver"}
_CORE_MODULES = ("qgraph.ir", "qgraph.pattern", "qgraph.pattern_match", "qgraph.pipeline", "qgraph.pipeline_inspection")
# The one package of passes/ that strings passes together (PyTorch's composite passes), by module.
_COMPOSITION = {
    "passes",
    "passes.composite",
    "passes.composite.lowering",
    "passes.composite.observers",
    "passes.composite.quant_dequant",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {
    _module_name(path): path for package in ("qgraph", "passes") for path in sorted((ROOT / package).rglob("*.py"))
}


def layer_of(module: str) -> int | None:
    """The layer of a module of this repository; None for anything else (torch, the standard library)."""
    if any(module == name or module.startswith(name + ".") for name in _CORE_MODULES):
        return CORE
    if module == "qgraph.quant" or module.startswith("qgraph.quant."):
        return DOMAIN
    if module == "passes" or module.startswith("passes."):
        return PASSES
    if module == "qgraph" or module.startswith("qgraph."):
        return DRIVER
    return None


def job_of(module: str) -> str | None:
    """The pass a module of ``passes`` belongs to: its subpackage or its own name; None for the composition."""
    if module in _COMPOSITION:
        return None
    return module.split(".")[1]


def _imported_modules(tree: ast.AST, module: str) -> list[tuple[int, str]]:
    """(line, module name) of every import in ``tree``, resolved against this repository's modules."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append((node.lineno, submodule if submodule in MODULES else base))
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def _violations() -> list[str]:
    found = []
    for module, path in MODULES.items():
        layer = layer_of(module)
        tree = ast.parse(path.read_text(), str(path))
        for line, target in _imported_modules(tree, module):
            target_layer = layer_of(target)
            if target_layer is None:
                continue
            where = f"{path.relative_to(ROOT)}:{line}"
            if target_layer > layer:
                found.append(
                    f"{where}: {LAYER_NAMES[layer]} module {module} imports {target} ({LAYER_NAMES[target_layer]})"
                )
            elif layer == PASSES == target_layer and job_of(module) is not None and job_of(target) != job_of(module):
                found.append(f"{where}: the pass {module} imports another pass, {target}")
    return found


def test_every_import_runs_downward():
    assert _violations() == []


def test_the_check_sees_imports_inside_functions_and_type_checking_blocks():
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from qgraph.api import prepare_jit\n"
        "def late():\n    import passes.composite\n    importlib.import_module('qgraph.report')\n"
    )
    assert [name for _, name in _imported_modules(tree, "qgraph.ir.graph")] == [
        "typing",
        "qgraph.api",
        "passes.composite",
        "qgraph.report",
    ]


def _modules_of(layer: int) -> list[str]:
    return sorted(module for module in MODULES if layer_of(module) == layer and module != "qgraph")


@pytest.mark.parametrize("layer", [CORE, DOMAIN, PASSES], ids=lambda layer: LAYER_NAMES[layer])
def test_each_layer_imported_alone_loads_nothing_above_it(layer):
    program = (
        "import importlib, json, sys\n"
        f"for name in {_modules_of(layer)!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT, timeout=300, check=True
    )
    loaded = json.loads(result.stdout.splitlines()[-1])
    above = [name for name in loaded if name != "qgraph" and (layer_of(name) or CORE) > layer]
    assert above == [], f"importing the {LAYER_NAMES[layer]} layer loads {above}"

"""``qgraph opt --pass NAME FILE``: one pass on the IR in a file, the result printed (like ``mlir-opt``).

Two kinds of input, told apart by the file's ending:

- ``.ir``: a TorchScript graph in IR text (``torch._C.parse_ir``; ``#``
  starts a comment). Graph passes (``GRAPH_PASSES``) run on it, in place,
  and the graph is printed.
- ``.py``: Python source defining ``Model`` (an ``nn.Module``; its
  ``EXAMPLE`` class attribute, a tuple of tensors, is what tracing and
  calibration run on, ``TRACE = True`` traces instead of scripting, and
  ``QAT = True`` prepares it in training mode for quantization-aware
  training, with ``prepare_qat_jit``'s stages, before convert's).
  ``NAME`` is a stage of ``prepare_jit``'s or ``convert_jit``'s pipeline
  (``qgraph passes`` lists prepare's): the model goes through the stages
  before it (calibrated on ``EXAMPLE`` between prepare and convert), then
  through ``NAME``, and every method graph of the module tree is printed,
  observers left out. ``dedup-module-uses`` runs on the captured model.

``--qconfig [PATH=]NAME`` entries give the qconfig_dict or QConfigMapping (as ``qgraph
report``'s); ``--dynamic`` prepares and converts for dynamic quantization;
``--lowering onednn`` converts with the oneDNN lowering, whose stages
(``onednn-*``) then are convert's.
The random state is seeded, so weights and qparams are the same each run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from passes import (
    canonicalize_conv,
    dedup_module_uses,
    fuse_linear,
    insert_prepack_unpack,
    quant_fusion,
    remove_list_mutation,
    replicate_dequantize,
    replicate_quantize,
    swap_functional_linear,
)
from passes.quant_dequant import (
    propagate_quantization,
    remove_redundant_dequantize,
    remove_redundant_quantization,
    replicate_choose_qparams_quant_dequant,
    replicate_clamp_scalar_args,
)
from qgraph.convert import convert_pipeline
from qgraph.ir import CppModule, Graph, as_python, clone_module, method_graph, named_modules
from qgraph.pipeline import Pipeline
from qgraph.prepare import prepare_pipeline
from qgraph.prepare_qat import prepare_qat_pipeline
from qgraph.quant.observers import is_observer_path
from qgraph.quant.qconfig import script_qconfig_dict
from qgraph.quant.quant_type import QuantType

__all__ = ["GRAPH_PASSES", "run_opt", "OptError"]


class OptError(ValueError):
    """A pass or an input ``qgraph opt`` cannot run; the message says why."""


def _quant_fusion(quant_type: QuantType) -> Callable[[Graph], object]:
    return lambda graph: quant_fusion(graph, quant_type)


# Graph passes by the name of their stage; each takes a graph, in place. The
# quantization type is the one ``--dynamic`` says.
GRAPH_PASSES: dict[str, Callable[[QuantType], Callable[[Graph], object]]] = {
    "canonicalize-conv": lambda _: canonicalize_conv,
    "fuse-linear": lambda _: fuse_linear,
    "swap-functional-linear": lambda _: swap_functional_linear,
    "remove-list-mutation": lambda _: remove_list_mutation,
    "replicate-choose-qparams": lambda _: replicate_choose_qparams_quant_dequant,
    "remove-redundant-quantization": lambda _: remove_redundant_quantization,
    "replicate-quantize": lambda _: replicate_quantize,
    "replicate-dequantize": lambda _: replicate_dequantize,
    "replicate-clamp-scalar-args": lambda _: replicate_clamp_scalar_args,
    "propagate-quantization": lambda _: propagate_quantization,
    "remove-redundant-dequantize": lambda _: remove_redundant_dequantize,
    "insert-prepack-unpack": lambda _: insert_prepack_unpack,
    "quant-fusion": _quant_fusion,
}


def run_opt(
    pass_name: str, path: str | Path, qconfig_dict: Any, quant_type: QuantType, lowering: str = "reference"
) -> str:
    """The text ``qgraph opt`` prints for ``pass_name`` on the file at ``path``."""
    path = Path(path)
    torch.manual_seed(0)
    if path.suffix == ".ir":
        if pass_name not in GRAPH_PASSES:
            raise OptError(f"{pass_name!r} is not a graph pass (one of {', '.join(sorted(GRAPH_PASSES))})")
        graph = torch._C.parse_ir(path.read_text())
        GRAPH_PASSES[pass_name](quant_type)(graph)
        return str(graph)
    if path.suffix == ".py":
        return _module_graphs(_run_on_model(pass_name, path, qconfig_dict, quant_type, lowering))
    raise OptError(f"{path}: expected IR text (.ir) or a model's Python source (.py)")


def _capture(path: Path) -> tuple[torch.jit.ScriptModule, tuple]:
    """The model the file defines, scripted (or traced), and its ``EXAMPLE`` (empty when it has none)."""
    namespace: dict[str, Any] = {"__name__": f"qgraph_opt_{path.stem}"}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    if "Model" not in namespace:
        raise OptError(f"{path}: defines no Model")
    model = namespace["Model"]()
    model.train(bool(getattr(model, "QAT", False)))
    example = tuple(getattr(model, "EXAMPLE", ()))
    if getattr(model, "TRACE", False):
        return torch.jit.trace(model, example, check_trace=False), example
    return torch.jit.script(model), example


def _run_on_model(pass_name: str, path: Path, qconfig_dict: Any, quant_type: QuantType, lowering: str) -> CppModule:
    captured, example = _capture(path)
    module = clone_module(captured._c)
    if pass_name == "dedup-module-uses":
        return dedup_module_uses(module)
    qat = captured.training
    scripted = script_qconfig_dict(qconfig_dict)
    prepare = prepare_qat_pipeline(scripted) if qat else prepare_pipeline(scripted, quant_type)
    if _has_stage(prepare, pass_name):
        return _run_through(prepare, pass_name, module)
    module = prepare.run(module)
    if quant_type == QuantType.STATIC:
        if not example:
            raise OptError(f"{path}: Model has no EXAMPLE to calibrate with before {pass_name!r}")
        with torch.no_grad():
            as_python(module)(*example)
        if qat:
            as_python(module).eval()
    try:
        convert = convert_pipeline(False, quant_type, [], lowering)
    except ValueError as err:
        raise OptError(str(err)) from None
    if _has_stage(convert, pass_name):
        return _run_through(convert, pass_name, module)
    names = [stage.name for stage in (*prepare.stages, *convert.stages)]
    raise OptError(f"{pass_name!r} is no stage of prepare or convert (one of {', '.join(names)}, dedup-module-uses)")


def _has_stage(pipeline: Pipeline, name: str) -> bool:
    return any(stage.name == name for stage in pipeline.stages)


def _run_through(pipeline: Pipeline, name: str, module: CppModule) -> CppModule:
    stages = list(pipeline.stages)
    end = next(i for i, stage in enumerate(stages) if stage.name == name) + 1
    return Pipeline(pipeline.name, stages[:end]).run(module)


def _module_graphs(module: CppModule) -> str:
    sections = []
    for path, submodule in named_modules(module):
        if is_observer_path(path):
            continue
        for method in submodule._method_names():
            sections.append(f"=== {path or '<root>'} : {method} ===\n{method_graph(submodule, method)}")
    return "\n".join(sections)

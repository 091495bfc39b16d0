"""convert: a calibrated, observed model to its quantized form, as pipeline stages.

``convert`` runs ``insert-quant-dequant`` (observers become quantize /
dequantize pairs; with ``debug=True`` the model stops here and computes the
quantized numerics with float ops) and, unless ``debug``, a lowering:
``finalize`` (``lowering="reference"``: PyTorch's quantized ops, prepacked
weights, frozen module) or the stages of ``passes.lower_onednn``
(``lowering="onednn"``: oneDNN int8 ops on plain integer tensors).
Constant propagation and DCE on ``forward`` close every path, as in the
reference.
"""

from __future__ import annotations

import torch
from torch.ao.quantization.quant_type import QuantType

from passes.insert_quant_dequant import OBSERVER_MARK, insert_quant_dequant_in_place
from passes.legalize_quantized import legalize_quantized
from qgraph.ir import CppModule, as_python, clone_module, drop_attributes, named_modules, walk
from qgraph.pipeline import Pipeline, Stage, method_graphs
from qgraph.prepare import PREPARED_MARK

__all__ = ["convert", "LOWERINGS"]

LOWERINGS = ("reference", "onednn")


def _check_model(model) -> None:
    if not isinstance(model, torch.jit.ScriptModule):
        raise ValueError(f"input must be a script module, got: {type(model)}")
    if not model._c._has_method("forward"):
        raise ValueError("input script module does not have a forward method")


def _check_prepared(module_c: CppModule, quant_type: QuantType) -> None:
    """ValueError for a model that prepare never saw: no prepare mark, no observers, nothing quantized.

    Models prepared by other tools have observers but no mark.
    """
    if module_c.hasattr(PREPARED_MARK):
        return
    if any(path.rpartition(".")[2].startswith(OBSERVER_MARK) for path, _ in named_modules(module_c)):
        return
    # Dynamic prepare quantizes RNNs itself and may leave no observer behind.
    if any(
        node.kind().startswith(("quantized::", "aten::quantized_"))
        for _, _, graph in method_graphs(module_c, distinct=True)
        for node in walk(graph)
    ):
        return
    prepare_api = "prepare_dynamic_jit" if quant_type == QuantType.DYNAMIC else "prepare_jit"
    raise ValueError(
        f"the model has no observers: it was not prepared. Call qgraph.{prepare_api}(model, qconfig_dict)"
        + (", run calibration data through the result," if quant_type == QuantType.STATIC else "")
        + " and convert what it returns (a qconfig_dict that quantizes nothing leaves nothing to convert)"
    )


def _stages(debug: bool, quant_type: QuantType, preserved_attrs: list[str], lowering: str) -> list[Stage]:
    def quant_dequant(module: CppModule) -> CppModule:
        # convert cloned the caller's model already (or was given it with inplace=True).
        return insert_quant_dequant_in_place(module, "forward", debug, quant_type)

    def finalize(module: CppModule) -> CppModule:
        from passes.finalize import finalize as finalize_pass

        return finalize_pass(module, quant_type, preserved_attrs)

    def clean_forward(module: CppModule) -> None:
        graph = module._get_method("forward").graph
        torch._C._jit_pass_constant_propagation(graph)
        torch._C._jit_pass_dce(graph)

    def legalize(module: CppModule) -> None:
        # Quantized graphs that PyTorch's kernels or loader would reject (or
        # that hit kernel bugs) are made to run; no bits change where the
        # reference's model runs.
        legalize_quantized(module)

    stages = [Stage("insert-quant-dequant", quant_dequant)]
    if not debug and lowering == "onednn":
        from passes.lower_onednn import finish_module, lower_onednn_pipeline
        from passes.swap_functional_linear import swap_functional_linear

        def swap_linear(module: CppModule) -> None:
            swap_functional_linear(module)

        stages.append(Stage("swap-functional-linear", swap_linear))
        stages += lower_onednn_pipeline(preserved_attrs).stages
    elif not debug:
        stages.append(Stage("finalize", finalize))
    stages.append(Stage("constant-propagation-dce", clean_forward))
    stages.append(Stage("legalize-quantized", legalize))
    if not debug and lowering == "onednn":
        # Last, once the float-op records are on the module: the state methods save them too.
        stages.append(Stage("onednn-module-state", finish_module))
    return stages


def _set_eval(module_c: CppModule) -> None:
    """``module.eval()`` on the C++ module tree, without building Python wrappers for it."""
    for _, submodule in named_modules(module_c):
        if submodule.hasattr("training"):
            submodule.setattr("training", False)


def _on_cpu(module_c: CppModule) -> bool:
    """Whether every parameter and buffer of the module tree is on the CPU already."""
    tensors = torch._C._jit_debug_module_iterators(module_c)
    return all(t.device.type == "cpu" for _, t in [*tensors["named_parameters_r"], *tensors["named_buffers_r"]])


def convert(model, inplace: bool = False, debug: bool = False, preserved_attrs=None,
            quant_type: QuantType = QuantType.STATIC, lowering: str = "reference") -> torch.jit.ScriptModule:
    """Quantize a model prepared with observers and calibrated.

    ``debug=True`` returns the reference model (float ops between
    ``aten::quantize_per_tensor`` / ``aten::dequantize``), whatever the
    lowering; otherwise the frozen model running quantized kernels: PyTorch's
    quantized ops (``lowering="reference"``) or oneDNN's int8 ops on plain
    integer tensors (``lowering="onednn"``, static quantization only).
    ``preserved_attrs`` names attributes freezing must keep. ``inplace=True``
    rewrites ``model`` itself and returns it; otherwise ``model`` is left
    unchanged.
    """
    _check_model(model)
    if lowering not in LOWERINGS:
        raise ValueError(f"lowering must be one of {', '.join(map(repr, LOWERINGS))}, got {lowering!r}")
    if isinstance(quant_type, str):
        quant_type = {"static": QuantType.STATIC, "dynamic": QuantType.DYNAMIC}.get(quant_type.lower(), quant_type)
    if quant_type not in (QuantType.STATIC, QuantType.DYNAMIC):
        raise ValueError(f"quant_type must be QuantType.STATIC or QuantType.DYNAMIC, got {quant_type!r}")
    if lowering == "onednn" and quant_type != QuantType.STATIC:
        raise ValueError(
            "lowering='onednn' lowers static quantization; dynamic quantization has the reference lowering only"
        )
    if preserved_attrs is None:
        preserved_attrs = []
    _check_prepared(model._c, quant_type)
    module_c = model._c if inplace else clone_module(model._c)
    if module_c.hasattr(PREPARED_MARK):
        module_c = drop_attributes(module_c, {module_c._type().qualified_name(): {PREPARED_MARK}})
    # Convert produces an inference model: eval mode decides the graph of
    # dropout and batch norm that freezing and fusion see.
    _set_eval(module_c)
    if not debug and not _on_cpu(module_c):
        # Quantized kernels run on CPU.
        as_python(module_c).cpu()
    pipeline = Pipeline("convert", _stages(debug, quant_type, list(preserved_attrs), lowering))
    result = pipeline.run(module_c)
    if inplace:
        model._reconstruct(result)
        return model
    return as_python(result)


"""Which layers to leave in float: the model's output SQNR with one layer at a time left in float.

``sensitivity(model, qconfig_dict, calibration)`` quantizes ``model`` once
as given (the baseline), then once per layer with that layer's qconfig set
to None, and measures each model's output against the float model's on
the same inputs. A layer's gain is how many dB the output SQNR rises when
only that layer stays float; the report lists layers by gain, largest
first, and carries the ``qconfig_dict`` that leaves the ``k`` largest in
float (and the SQNR that one gives)::

    report = qgraph.sensitivity(scripted, {"": qconfig}, batches, k=2)
    print(report.format())
    quantized = qgraph.quantize_jit(scripted, report.qconfig_dict, calibrate, [batches])

A layer is a module without submodules of its own that runs a quantized
op in the baseline (a conv, a linear, an LSTM, ...). A ``QConfigMapping``
works as well: the layer is switched off with ``set_module_name(path, None)``
on a copy, and the returned configuration is a ``QConfigMapping``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from qgraph.api import convert_jit, prepare_jit, quantize_dynamic_jit
from qgraph.compare import as_batches
from qgraph.ir import as_cpp, children_of, module_path_of, named_modules, walk
from qgraph.numerics_report import format_table, output_errors
from qgraph.quant.qconfig_mapping import is_qconfig_mapping

__all__ = ["LayerSensitivity", "SensitivityReport", "output_sqnr", "quantize_with", "sensitivity"]


@dataclass(frozen=True)
class LayerSensitivity:
    module_path: str
    sqnr: float  # model output SQNR (dB) with this layer left in float
    gain: float  # sqnr minus the baseline's


@dataclass
class SensitivityReport:
    baseline_sqnr: float
    layers: list[LayerSensitivity] = field(default_factory=list)  # largest gain first
    k: int = 0
    qconfig_dict: Any = None  # the configuration leaving the k layers of largest gain in float
    excluded_sqnr: float | None = None  # the output SQNR with that configuration

    def format(self, limit: int | None = None, width: int = 100) -> str:
        """The layers by gain, largest first (``limit`` rows at most), within ``width`` columns."""
        lines = [f"baseline (every layer quantized): model output SQNR {self.baseline_sqnr:.2f} dB"]
        if not self.layers:
            return lines[0] + "\nno quantized layer to leave in float"
        shown = self.layers[: limit if limit is not None else len(self.layers)]
        rows = [
            (str(i + 1), layer.module_path, f"{layer.sqnr:.2f}", f"{layer.gain:+.2f}") for i, layer in enumerate(shown)
        ]
        header = ("#", "layer left in float", "output SQNR dB", "gain dB")
        lines.append(format_table(header, rows, width=width, right_aligned=(0, 2, 3), shrinkable=(1,)))
        if len(shown) < len(self.layers):
            lines.append(f"({len(self.layers) - len(shown)} more)")
        if self.k and self.excluded_sqnr is not None:
            names = ", ".join(layer.module_path for layer in self.layers[: self.k])
            lines.append(
                f"leaving the worst {self.k} in float ({names}): model output SQNR {self.excluded_sqnr:.2f} dB"
            )
        return "\n".join(lines)


def _with_layers_off(qconfig_dict: Any, paths: Sequence[str]) -> Any:
    if is_qconfig_mapping(qconfig_dict):
        mapping = copy.copy(qconfig_dict)
        mapping.module_name_qconfigs = copy.copy(qconfig_dict.module_name_qconfigs)
        for path in paths:
            mapping.set_module_name(path, None)
        return mapping
    return {**qconfig_dict, **{path: None for path in paths}}


def quantize_with(
    model: torch.jit.ScriptModule, qconfig_dict: Any, calibration: list[tuple], dynamic: bool = False
) -> torch.jit.ScriptModule:
    """``model`` quantized: dynamic, or prepared, run on every calibration call and converted."""
    if dynamic:
        return quantize_dynamic_jit(model, qconfig_dict)
    prepared = prepare_jit(model, qconfig_dict)
    with torch.no_grad():
        for arguments in calibration:
            prepared(*arguments)
    return convert_jit(prepared)


def output_sqnr(float_model: Any, quantized: Any, batches: list[tuple]) -> float:
    """The SQNR (dB) of ``quantized``'s outputs against ``float_model``'s, over every call."""
    errors = None
    with torch.no_grad():
        for arguments in batches:
            errors = output_errors(float_model(*arguments), quantized(*arguments), errors)
    value = errors.numbers()[0] if errors is not None else None
    if value is None:
        raise ValueError("the model outputs no tensor to compare")
    return value


def _layers(model: Any, quantized: Any) -> list[str]:
    """Modules without submodules that run a quantized op in ``quantized``, in graph order."""
    leaves = {path for path, module in named_modules(as_cpp(model)) if path and not children_of(module)}
    found: list[str] = []
    for node in walk(quantized.graph):
        kind = node.kind()
        if not kind.startswith(("quantized::", "aten::quantized_")) or kind.endswith(("_prepack", "_unpack")):
            continue
        path = module_path_of(node)
        if path in leaves and path not in found:
            found.append(path)
    return found


def sensitivity(
    model: torch.jit.ScriptModule,
    qconfig_dict: Any,
    calibration: Any,
    inputs: Any = None,
    *,
    k: int = 1,
    dynamic: bool = False,
) -> SensitivityReport:
    """Quantize with each layer left in float in turn; see the module docstring.

    ``calibration`` and ``inputs`` (default: the calibration data) are one
    call's arguments or a list of calls, as for ``qgraph.compare``;
    ``dynamic`` quantizes with ``quantize_dynamic_jit`` (no calibration run).
    """
    if not isinstance(model, torch.jit.ScriptModule):
        raise TypeError(f"sensitivity needs the scripted or traced float model, got {type(model).__name__}")
    if not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be an int >= 0, got {k!r}")
    calibration_batches = as_batches(calibration)
    batches = calibration_batches if inputs is None else as_batches(inputs)
    baseline = quantize_with(model, qconfig_dict, calibration_batches, dynamic)
    baseline_sqnr = output_sqnr(model, baseline, batches)
    layers = []
    for path in _layers(model, baseline):
        quantized = quantize_with(model, _with_layers_off(qconfig_dict, [path]), calibration_batches, dynamic)
        value = output_sqnr(model, quantized, batches)
        layers.append(LayerSensitivity(path, value, value - baseline_sqnr))
    layers.sort(key=lambda layer: -layer.gain)
    k = min(k, len(layers))
    excluded = _with_layers_off(qconfig_dict, [layer.module_path for layer in layers[:k]])
    excluded_sqnr = None
    if k:
        excluded_sqnr = output_sqnr(model, quantize_with(model, excluded, calibration_batches, dynamic), batches)
    return SensitivityReport(baseline_sqnr, layers, k, excluded, excluded_sqnr)

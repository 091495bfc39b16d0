"""Per-op numerics of a quantized model against its float model: which op lost the accuracy.

``compare(float_model, quantized_model, inputs)`` runs both models on the
same inputs and, for every quantized op of ``quantized_model`` (a model from
``convert_jit``, or the ``debug=True`` reference model), compares the op's
output with the same value in the float model: SQNR in dB, the largest
absolute error, and the error's norm relative to the float value's::

    report = qgraph.compare(float_model, quantized, batches)
    print(report.format())

    4 quantized ops; model output SQNR 41.82 dB
    SQNR dB  max abs err  rel err  op                         module   source
    -------  -----------  -------  -------------------------  -------  -------------
      34.82     8.05e-03  1.8e-02  aten::mean                 <model>  model.py:7
      35.83     3.87e-02  1.6e-02  quantized::conv2d_relu     conv     conv.py:560
      36.66     2.60e-02  1.5e-02  aten::quantize_per_tensor  <model>  input 0
      41.82     6.71e-03  8.1e-03  quantized::linear          fc       linear.py:134

The ops are: the quantized kernels (``quantized::conv2d_relu``,
``quantized::linear_dynamic``, ``aten::quantized_lstm``, ...), ops that
compute on quantized tensors and round (``aten::avg_pool2d``,
``aten::sigmoid``, ...; not the ones that only move values, such as
``flatten`` or ``max_pool2d``), and each ``aten::quantize_per_tensor`` of an
activation (a model input or a float op's output). In a ``debug=True`` model,
every quantize of an activation stands for the op whose output it quantizes.

How an op is matched with its float value. The quantized model is frozen
and fused, so its ops are not the float model's; what survives is what
TorchScript keeps on every node: the source range of the code that made it
and, until the model is saved, the module call stack. Both models' forward
graphs are inlined (clones: the models are not touched), so every node has
its module path and source range, and:

1. A quantized op stands for the float op its fusion pattern was anchored
   on, whose source range and call stack the fusion copied
   (``quantized::conv2d_relu`` for the conv; a quantize for the op that
   produced its input; a float op is itself).
2. Nodes are grouped by (module path, source range, op family), the family
   being the op with variants folded (``conv2d``, traced ``_convolution``
   and the ``quantized::conv2d*`` kernels are ``conv``; ``addmm`` and
   ``linear`` are ``linear``; in-place ops are their out-of-place family).
   A traced source range is the Python stack at trace time: only its
   innermost frame counts, so models traced from different places match. A
   model loaded from a file has lost its call stacks: its nodes are grouped
   without module path.
3. Within a group, the k-th node of the quantized graph (in program order,
   every node of the family counted, also those left in float) is the k-th
   of the float graph. Groups of different sizes (freezing folded an ``if``
   on a module attribute that the float graph still has, so the float ops
   sit in both branches) pair at run time: every float candidate is
   recorded, and the one the float model computed for that input is taken.
4. From the matched float op, the value compared is where the quantized
   value is: after a BatchNorm that folding removed (a conv whose only use
   is a BatchNorm the quantized graph no longer has), then after the relu a
   ``*_relu`` kernel fused.

Each op's output is recorded while the models run by graph rewriting
(``qgraph.taps``), summed over all inputs. An op with no float value found
(a float model captured differently from the quantized one), or that no
input reached (a branch not taken), is listed at the end without numbers.
"""

from __future__ import annotations

from typing import Any

import torch

from qgraph.ir import Graph, Node, module_path_of, source_location, source_text, walk
from qgraph.numerics_report import (
    COMPARED,
    NO_FLOAT_VALUE,
    NOT_RUN,
    ErrorSum,
    NumericsReport,
    OpNumerics,
    output_errors,
)
from qgraph.op_matching import TRACED_FRAME, Matcher, Site, compared_sites
from qgraph.taps import Taps, as_argument_tuple

__all__ = ["as_batches", "compare"]


def as_batches(inputs: Any) -> list[tuple]:
    """The calls to run: a list is one call per element (a tuple of arguments, or one tensor); else one call."""
    if isinstance(inputs, list):
        if not inputs:
            raise ValueError("no inputs to run: the list of batches is empty")
        return [as_argument_tuple(batch) for batch in inputs]
    return [as_argument_tuple(inputs)]


def _script_like(float_model: torch.nn.Module, quantized_graph: Graph, example: tuple) -> torch.jit.ScriptModule:
    """Capture an eager float model as the quantized one was (traced ranges name Python stack frames)."""
    traced = any(TRACED_FRAME.match(source_text(n)) for n in walk(quantized_graph))
    model = float_model.eval()
    return torch.jit.trace(model, example) if traced else torch.jit.script(model)


def compare(float_model: Any, quantized_model: Any, inputs: Any) -> NumericsReport:
    """Each quantized op's output against the float model's same value, on the same inputs.

    ``float_model`` is the scripted or traced model that was quantized (an
    eager ``nn.Module`` is captured the way the quantized model was);
    ``quantized_model`` comes from ``convert_jit`` (or ``debug=True``), in
    memory or loaded from a file; ``inputs`` is one call's arguments (a
    tuple, or one tensor) or a list of such calls. Returns a
    ``NumericsReport``; ``report.format()`` prints it worst SQNR first.
    """
    batches = as_batches(inputs)
    quantized_taps = Taps(quantized_model)
    if isinstance(float_model, torch.nn.Module) and not isinstance(float_model, torch.jit.ScriptModule):
        float_model = _script_like(float_model, quantized_taps.graph, batches[0])
    float_taps = Taps(float_model)
    matcher = Matcher(float_taps.graph, quantized_taps.graph)
    sites = compared_sites(quantized_taps.graph)
    # Every match before any tap: a tap adds a reader to the value it records.
    candidates = [matcher.float_values(site) for site in sites]
    # A model input always has its float value; an op is matched only through what the graphs kept.
    op_candidates = [found for site, found in zip(sites, candidates) if site.origin is not None]
    if op_candidates and not any(op_candidates):
        raise ValueError(
            "no quantized op could be matched with a value of the float model: pass the float model that was "
            "quantized, captured the same way (scripted or traced)"
        )
    quantized_keys = [quantized_taps.tap(site.value) for site in sites]
    float_keys = [[float_taps.tap(value) for value, _ in found] for found in candidates]
    errors = [ErrorSum() for _ in sites]
    chosen: list[Node | None] = [None for _ in sites]
    model_output = ErrorSum()
    for batch in batches:
        expected_output, expected = float_taps.run(batch)
        actual_output, actual = quantized_taps.run(batch)
        output_errors(expected_output, actual_output, model_output)
        for index, quantized_key in enumerate(quantized_keys):
            ran = [i for i, key in enumerate(float_keys[index]) if key in expected]
            if quantized_key not in actual or len(ran) != 1:
                continue
            errors[index].add(expected[float_keys[index][ran[0]]], actual[quantized_key])
            chosen[index] = candidates[index][ran[0]][1]
    report = NumericsReport(output_sqnr=model_output.numbers()[0])
    for site, site_errors, found, float_node in zip(sites, errors, candidates, chosen):
        where = site.where or site.origin
        # A model loaded from a file forgot its module paths; the float model's op still knows its own.
        path = module_path_of(where) if where is not None else ""
        if not path and float_node is not None:
            path = module_path_of(float_node)
        numbers = site_errors.numbers()
        report.ops.append(
            OpNumerics(
                module_path=path,
                kind=site.kind,
                source=(source_location(where) if where is not None else None) or _input_name(site),
                sqnr=numbers[0],
                max_abs_error=numbers[1],
                relative_error=numbers[2],
                status=COMPARED if numbers[0] is not None else (NOT_RUN if found else NO_FLOAT_VALUE),
            )
        )
    return report


def _input_name(site: Site) -> str | None:
    return f"input {site.input_index}" if site.origin is None else None

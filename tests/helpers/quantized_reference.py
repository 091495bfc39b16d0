"""PyTorch's own graph-mode quantization as the oracle for finalize tests.

``reference_pair`` prepares and calibrates a model with
``torch.ao.quantization``, then gives both the reference's quant-dequant
model (the input finalize takes) and the reference's fully converted model,
from the same calibrated observers, so the two pipelines can be compared
bit for bit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
from torch.ao.quantization import convert_dynamic_jit, convert_jit, prepare_dynamic_jit, prepare_jit
from torch.ao.quantization.quant_type import QuantType
from torch.jit._recursive import wrap_cpp_module

from helpers import models


def capture(model: torch.nn.Module, example: Sequence[torch.Tensor], tracing: bool) -> torch.jit.ScriptModule:
    # strict=False: several test models return a list of outputs, which is always the same list.
    return models.capture(model, tuple(example), tracing, strict=False, check_trace=True)


def reference_pair(
    scripted: torch.jit.ScriptModule,
    qconfig_dict: dict,
    calibration: Sequence[Sequence[torch.Tensor]] = (),
    quant_type: QuantType = QuantType.STATIC,
) -> tuple[torch.jit.ScriptModule, torch.jit.ScriptModule]:
    """(reference quant-dequant model, reference converted model) for one calibration."""
    if quant_type == QuantType.DYNAMIC:
        prepared = prepare_dynamic_jit(scripted, qconfig_dict)
    else:
        prepared = prepare_jit(scripted, qconfig_dict)
        for inputs in calibration:
            prepared(*inputs)
    qdq = torch._C._jit_pass_insert_quant_dequant(prepared._c, "forward", False, False, quant_type)
    converted = convert_dynamic_jit(prepared) if quant_type == QuantType.DYNAMIC else convert_jit(prepared)
    return wrap_cpp_module(qdq), converted


def flat_outputs(output) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in flat_outputs(item)]
    raise TypeError(f"unexpected model output {type(output).__name__}")


def assert_equal_outputs(ours, reference, inputs: Sequence[torch.Tensor]) -> None:
    """The two models give bit-identical outputs on ``inputs``."""
    got, expected = flat_outputs(ours(*inputs)), flat_outputs(reference(*inputs))
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        if a.is_quantized or b.is_quantized:
            assert a.is_quantized and b.is_quantized
            assert a.q_scale() == b.q_scale() and a.q_zero_point() == b.q_zero_point()
            a, b = a.int_repr(), b.int_repr()
        assert a.dtype == b.dtype
        assert torch.equal(a, b), f"outputs differ by up to {(a.float() - b.float()).abs().max().item()}"


def quantization_op_counts(graph: torch._C.Graph) -> Counter:
    """How many quantized ops and quantize/dequantize nodes ``graph`` runs, nested blocks included."""
    counts: Counter = Counter()
    stack = [graph.block()]
    while stack:
        for node in stack.pop().nodes():
            kind = node.kind()
            if kind.startswith("quantized::") or kind in _QUANTIZATION_KINDS:
                counts[kind] += 1
            stack.extend(node.blocks())
    return counts


_QUANTIZATION_KINDS = {
    "aten::quantize_per_tensor",
    "aten::quantize_per_channel",
    "aten::dequantize",
    "aten::_choose_qparams_per_tensor",
}


def aten_op_counts(graph: torch._C.Graph) -> Counter:
    """How many ``aten::`` compute ops ``graph`` runs (constants and prim ops left out)."""
    counts: Counter = Counter()
    stack = [graph.block()]
    while stack:
        for node in stack.pop().nodes():
            if node.kind().startswith("aten::"):
                counts[node.kind()] += 1
            stack.extend(node.blocks())
    return counts

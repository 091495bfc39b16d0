"""Weight fake-quants brought to what eager convert quantizes with (convert of a QAT model).

Takes a module tree whose conv / linear weights are read from attributes
and fake-quantized by an observer call in the same graph (after
``fold_trained_conv_bn``, BatchNorm is folded already)::

    %w = prim::GetAttr[name="weight"](%self)
    %w.1 = prim::CallMethod[name="forward"](%_observer_0, %w)

and leaves the graphs as they are. For each such weight whose observer is a
fake-quant module, two things eager convert does before quantizing a QAT
module's weight (``from_float``):

- the fake-quant runs once more on the final weight (a folded weight is not
  the one training fake-quantized last); its statistics move only if its
  observer is enabled, as in eager;
- the weight is clamped to ``[(quant_min - zero_point) * scale,
  (quant_max - zero_point) * scale]``: eager clamps the quantized integers
  to the fake-quant's range, while the quantize ops convert emits saturate
  at the dtype's range only. Only a range narrower than the dtype's
  (``-127..127``) changes anything.

Post-training observers are not fake-quants and are left alone, so
``prepare_jit`` models convert exactly as before.
"""

from __future__ import annotations

from typing import Any

import torch

from qgraph.ir import TENSOR, CppModule, as_cpp, method_graph, named_modules, walk
from qgraph.quant.observers import observer_name
from qgraph.quant.qat_modules import is_fake_quant

__all__ = ["settle_weight_fake_quants"]


def settle_weight_fake_quants(module: Any) -> int:
    """Refresh and clamp every fake-quantized attribute weight of ``module`` in place; returns how many."""
    settled = 0
    for _, owner in named_modules(as_cpp(module)):
        done: set[tuple[str, str]] = set()
        for method in owner._method_names():
            graph = method_graph(owner, method)
            self_value = next(graph.inputs())
            for node in walk(graph):
                name = observer_name(node.output()) if node.outputsSize() == 1 else None
                if name is None:
                    continue
                read = node.inputsAt(1).node()
                if read.kind() != "prim::GetAttr" or read.input() != self_value:
                    continue
                weight_name = read.s("name")
                if (name, weight_name) in done or not read.output().type().isSubtypeOf(TENSOR):
                    continue
                fake_quant = owner.getattr(name)
                if not is_fake_quant(fake_quant):
                    continue
                done.add((name, weight_name))
                _settle(owner, weight_name, fake_quant)
                settled += 1
    return settled


def _settle(owner: CppModule, weight_name: str, fake_quant: CppModule) -> None:
    weight = owner.getattr(weight_name)
    with torch.no_grad():
        fake_quant._get_method("forward")(weight)
        scale, zero_point = fake_quant._get_method("calculate_qparams")()
        if scale.numel() > 1:
            shape = [1] * weight.dim()
            shape[fake_quant.getattr("ch_axis")] = -1
            scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
        low = (fake_quant.getattr("quant_min") - zero_point) * scale
        high = (fake_quant.getattr("quant_max") - zero_point) * scale
        clamped = torch.max(torch.min(weight, high), low).to(weight.dtype)
    if not torch.equal(clamped, weight):
        owner.setattr(weight_name, clamped.detach())

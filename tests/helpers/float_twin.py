"""An oracle for ``qgraph.compare``'s matching that uses no graph metadata: the debug model run in float.

A ``debug=True`` model computes every quantized value as
``dequantize(quantize(v))`` around float ops. With each quantize passing its
input through, each dequantize copying its (now float) input, and the
qparams it reads (``q_scale`` ...) made constants, the same graph computes
the float model (up to the folded BatchNorm's rounding), and ``v`` -- the
input of each quantize of an activation -- is, by construction, the float
value the quantized op's output stands for.
"""

from __future__ import annotations

import torch

from qgraph.ir import insert_op, walk
from qgraph.taps import Taps

_QUANTIZE = ("aten::quantize_per_tensor", "aten::quantize_per_channel")
_QPARAM_READS = {"aten::q_scale": 1.0, "aten::q_zero_point": 0, "prim::dtype": 13}


def float_twin(debug_model) -> tuple[Taps, dict]:
    """A ``Taps`` of the debug model run in float, and {quantize node of the original walk order: its float input}.

    The keys are positions in ``walk`` order of the debug model's inlined
    forward, the order ``Taps(debug_model).graph`` has too.
    """
    twin = Taps(debug_model)
    nodes = list(walk(twin.graph))
    inputs = {i: node.inputsAt(0) for i, node in enumerate(nodes) if node.kind() in _QUANTIZE}
    for node in nodes:
        if node.kind() in _QPARAM_READS:
            constant = twin.graph.insertConstant(_QPARAM_READS[node.kind()])
            constant.node().moveBefore(node)
            node.output().replaceAllUsesWith(constant)
    for node in nodes:
        if node.kind() in _QUANTIZE:
            node.output().replaceAllUsesWith(node.inputsAt(0))
    for node in nodes:
        if node.kind() != "aten::dequantize":
            continue
        if node.inputsAt(0).type().kind() == "TensorType":
            copy = insert_op(twin.graph, "aten::clone", [node.inputsAt(0), None], before=node)
            node.output().replaceAllUsesWith(copy.output())
        else:  # a list of tensors (cat's inputs): no op writes into it in place
            node.output().replaceAllUsesWith(node.inputsAt(0))
    # The bypassed nodes must not run: they only take quantized tensors.
    for node in reversed(nodes):
        if node.kind() in (*_QUANTIZE, *_QPARAM_READS, "aten::dequantize") and not node.output().uses():
            node.destroy()
    return twin, inputs


def assert_close_to_twin(actual: torch.Tensor, twin: torch.Tensor, what: str) -> None:
    actual = actual.reshape(twin.shape)
    tolerance = 1e-3 * float(twin.abs().max()) + 1e-6
    assert torch.allclose(actual, twin, rtol=1e-3, atol=tolerance), f"{what}: not the float twin's value"

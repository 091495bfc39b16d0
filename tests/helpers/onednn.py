"""Shared set-up of the oneDNN lowering tests: the qconfig, both lowerings of one calibrated model, steps.

The reference lowering of a model quantized with full 8-bit activations
runs on PyTorch's onednn engine (the x86 engine's kernels saturate without
``reduce_range``), so ``lowered_pair`` converts and ``on_onednn_engine``
runs it there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import pytest
import torch
from torch.ao.quantization import MinMaxObserver, QConfig, default_per_channel_weight_observer

import qgraph
from passes.lower_onednn import OnednnUnavailableError, check_onednn

# The onednn qconfig's 8-bit activations and per-channel weights, with MinMax observers (fast to calibrate).
ONEDNN_QCONFIG = QConfig(
    activation=MinMaxObserver.with_args(dtype=torch.quint8), weight=default_per_channel_weight_observer
)


def onednn_available() -> bool:
    try:
        check_onednn()
    except OnednnUnavailableError:
        return False
    return True


requires_onednn = pytest.mark.skipif(
    not onednn_available(), reason="PyTorch's oneDNN int8 ops are missing or inexact on this CPU (no VNNI)"
)


@pytest.fixture(autouse=True)
def seeded():
    """Import into a test module: every test builds its model weights from seed 0."""
    torch.manual_seed(0)


@contextlib.contextmanager
def on_onednn_engine() -> Iterator[None]:
    saved = torch.backends.quantized.engine
    torch.backends.quantized.engine = "onednn"
    try:
        yield
    finally:
        torch.backends.quantized.engine = saved


def calibrate(model, batches: Sequence[torch.Tensor]) -> None:
    with torch.no_grad():
        for batch in batches:
            model(batch)


def prepared_model(model: torch.nn.Module, batches: Sequence[torch.Tensor], capture: str = "script", qconfig=None):
    captured = torch.jit.script(model.eval()) if capture == "script" else torch.jit.trace(model.eval(), batches[0])
    prepared = qgraph.prepare_jit(captured, {"": qconfig or ONEDNN_QCONFIG})
    calibrate(prepared, batches)
    return prepared


def lowered_pair(model: torch.nn.Module, batches: Sequence[torch.Tensor], capture: str = "script", qconfig=None):
    """(the onednn-lowered model, the reference-lowered model) of one calibrated ``model``."""
    prepared = prepared_model(model, batches, capture, qconfig)
    with on_onednn_engine():
        return qgraph.convert_jit(prepared, lowering="onednn"), qgraph.convert_jit(prepared)


def run_reference(reference, x: torch.Tensor) -> torch.Tensor:
    with on_onednn_engine(), torch.no_grad():
        return reference(x)


def coarsest_step(reference) -> float:
    """The largest quantization step among the values the reference model rounds (quantized ops' outputs)."""
    steps = []
    for node in reference.graph.nodes():
        kind = node.kind()
        if kind == "aten::quantize_per_tensor":
            steps.append(node.inputsAt(1).toIValue())
        elif kind.startswith("quantized::") and not kind.endswith(("prepack", "unpack")):
            scale = node.inputsAt(node.inputsSize() - 2)
            if scale.node().kind() == "prim::Constant" and isinstance(scale.toIValue(), float):
                steps.append(scale.toIValue())
    return float(max(steps))


def graph_text(model) -> str:
    return str(model.graph)


def batches(*shape: int, count: int = 3, batch: int = 2) -> list[torch.Tensor]:
    """``count`` seeded random batches of ``batch`` samples of ``shape``."""
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(batch, *shape, generator=generator) for _ in range(count)]


def assert_close_to_reference(lowered, reference, x: torch.Tensor, steps: float) -> None:
    """The two lowerings' outputs for ``x`` differ by at most ``steps`` of the reference's coarsest step."""
    with torch.no_grad():
        actual = lowered(x)
    step = coarsest_step(reference)
    largest = (actual - run_reference(reference, x)).abs().max().item()
    assert largest <= steps * step + 1e-6, f"differs by {largest / step:.2f} steps (allowed {steps})"

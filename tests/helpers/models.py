"""Capturing, calibrating, saving and running models the way most tests do.

``capture`` scripts or traces a model in eval mode; ``how`` is ``"script"``
/ ``"trace"`` or, for tests parametrized on tracing, a bool. Tracing skips
PyTorch's trace check (it runs the model twice more, and these models have
no data-dependent control flow) unless ``check_trace`` asks for it.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["capture", "calibrate", "reloaded", "run_graph"]


def capture(
    model: torch.nn.Module, example: Any, how: str | bool, *, strict: bool = True, check_trace: bool = False
) -> torch.jit.ScriptModule:
    model = model.eval()
    if how not in ("trace", True):
        return torch.jit.script(model)
    example = example if isinstance(example, tuple) else (example,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.jit.trace(model, example, strict=strict, check_trace=check_trace)


def calibrate(model: Any, batches: Iterable[Any]) -> None:
    """Run ``model`` on each batch: a tensor, or a tuple of positional arguments."""
    with torch.no_grad():
        for batch in batches:
            model(*batch) if isinstance(batch, tuple) else model(batch)


def reloaded(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """``module`` after ``torch.jit.save`` and ``torch.jit.load``."""
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


def run_graph(graph: torch._C.Graph, *args: Any) -> Any:
    """Run a bare graph (no module) on ``args``."""
    return torch._C._create_function_from_graph("forward", graph)(*args)

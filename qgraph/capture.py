"""Front ends: turn an eager ``torch.nn.Module`` into the TorchScript module qgraph rewrites.

Three ways to capture a model, each with its own trade-off:

- ``"script"``: ``torch.jit.script`` compiles the Python source. Control flow
  (``if``, loops) survives; the source must be TorchScript-compatible.
- ``"trace"``: ``torch.jit.trace`` runs the model once on ``example_inputs``
  and records the ops it executed. Any Python works, but control flow is
  frozen to the path those inputs took, and convolutions appear as
  ``aten::_convolution`` (qgraph canonicalises them later).
- ``"fx"``: ``torch.fx.symbolic_trace`` records the ops with symbolic values
  (no example inputs needed; ``forward`` must not branch on tensor values),
  then ``torch.jit.script`` compiles the resulting ``GraphModule``.

Capture never changes the model's train/eval mode: the captured module has
the mode the model had. Tracing records the model in that mode (dropout and
batch-norm behave as in training when ``model.training`` is True), so call
``model.eval()`` first when capturing for inference.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["CaptureError", "capture", "METHODS"]

METHODS = ("script", "trace", "fx")


class CaptureError(RuntimeError):
    """PyTorch could not capture the model with the requested method."""


def capture(model: torch.nn.Module, example_inputs: Any = None, method: str = "script") -> torch.jit.ScriptModule:
    """Capture ``model`` as a ``torch.jit.ScriptModule`` by ``method``.

    ``example_inputs`` (a tensor or a tuple of positional arguments) is what
    ``"trace"`` runs the model on; ``"script"`` and ``"fx"`` do not run the
    model and ignore it. A model that is already a ScriptModule is returned
    unchanged by ``"script"``; tracing it again is refused.

    Raises ``ValueError`` for an unknown method, for ``"trace"`` without
    example inputs, and for ``"trace"``/``"fx"`` on a ScriptModule;
    ``TypeError`` for a model that is not a ``torch.nn.Module`` or inputs of
    the wrong kind; ``CaptureError`` (with PyTorch's message) when PyTorch
    fails to capture the model.

    >>> scripted = capture(model)                                   # doctest: +SKIP
    >>> traced = capture(model, torch.randn(1, 3, 8, 8), "trace")   # doctest: +SKIP
    """
    if method not in METHODS:
        raise ValueError(f"unknown capture method {method!r}; choose one of {', '.join(map(repr, METHODS))}")
    if isinstance(model, torch.jit.ScriptModule):
        if method == "script":
            return model
        raise ValueError(
            f"method={method!r} needs the eager torch.nn.Module, but the model is already a "
            "ScriptModule; pass it with method='script' (it is returned as is)"
        )
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"capture expects a torch.nn.Module, got {type(model).__name__}")

    if method == "script":
        return _run("script", torch.jit.script, model)
    if method == "trace":
        return _run("trace", torch.jit.trace, model, _as_trace_args(example_inputs))
    graph_module = _run(
        "fx",
        torch.fx.symbolic_trace,
        model,
        hint="symbolic tracing needs a forward that does not branch on tensor values "
        "or call untraceable Python; use method='script' or 'trace' for such models",
    )
    with warnings.catch_warnings():
        # Scripting any fx GraphModule trips over fx's own empty-container
        # annotations in GraphModule.__init__; the warning says nothing about
        # the user's model.
        warnings.filterwarnings("ignore", message="The TorchScript type system doesn't support instance-level")
        return _run("fx", torch.jit.script, graph_module, hint="scripting the fx GraphModule failed")


def _as_trace_args(example_inputs: Any) -> tuple:
    if example_inputs is None:
        raise ValueError(
            "method='trace' needs example_inputs (a tensor or a tuple of positional arguments) to run the model on"
        )
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, tuple):
        return example_inputs
    raise TypeError(
        f"example_inputs must be a tensor or a tuple of positional arguments, got {type(example_inputs).__name__}"
    )


def _run(method: str, capture_fn: Callable[..., Any], *args: Any, hint: str | None = None) -> Any:
    try:
        return capture_fn(*args)
    except Exception as err:  # PyTorch raises many kinds; all mean "could not capture"
        detail = f" ({hint})" if hint else ""
        raise CaptureError(f"capturing the model with method={method!r} failed{detail}: {err}") from err

"""Which lowering made a converted module: the mark a lowering leaves and the report reads.

Convert lowers a quantize / dequantize model in one of ``LOWERINGS``:
``"reference"`` (PyTorch's quantized ops, bit for bit as the reference) or
``"onednn"`` (oneDNN's int8 ops on plain integer tensors). A lowering other
than the reference marks the root module with the string attribute
``_qgraph_lowering``, which survives ``torch.jit.save``; an unmarked module
is the reference's.
"""

from __future__ import annotations

from typing import Any

import torch

from qgraph.ir import CppModule, as_cpp, set_attr

__all__ = ["LOWERINGS", "LOWERING_ATTRIBUTE", "check_lowering", "lowering_of", "mark_lowering"]

LOWERINGS = ("reference", "onednn")
LOWERING_ATTRIBUTE = "_qgraph_lowering"


def check_lowering(lowering: Any) -> str:
    """``lowering`` itself, or ValueError naming the lowerings there are."""
    if lowering not in LOWERINGS:
        raise ValueError(f"lowering must be one of {', '.join(map(repr, LOWERINGS))}, got {lowering!r}")
    return lowering


def mark_lowering(module: CppModule, lowering: str) -> None:
    """Record on ``module`` that ``lowering`` made it; in place."""
    set_attr(module, LOWERING_ATTRIBUTE, check_lowering(lowering), torch._C.StringType.get())


def lowering_of(module: Any) -> str:
    """The lowering a converted module (ScriptModule or ``._c``) was made with; ``"reference"`` when unmarked."""
    module_c = as_cpp(module)
    return module_c.getattr(LOWERING_ATTRIBUTE) if module_c.hasattr(LOWERING_ATTRIBUTE) else "reference"

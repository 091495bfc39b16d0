"""qgraph: graph-mode quantization of TorchScript models.

A drop-in for ``torch.ao.quantization``'s JIT API whose passes are written in
Python and can be inspected after every stage (``qgraph.pipeline.inspect``).

The package is layered, each layer importing only those below it::

    qgraph.api, prepare, convert, report, cli, capture   the driver, with the tools
    (compare, sensitivity, draw, cli_tools)               built on it
    passes                                                the rewrites, one job each
    qgraph.quant                                          quantization facts and rules
    qgraph.ir, qgraph.pattern, qgraph.pipeline            TorchScript IR, patterns, stages

The public names below live in the driver (and the calibrators and their
merging in ``qgraph.quant``) and are imported on first use (PEP 562), so
that ``import passes`` (which imports ``qgraph.ir``) pulls in the layers
below the passes and nothing of the driver.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qgraph.api import (
        convert_dynamic_jit,
        convert_jit,
        fuse_conv_bn_jit,
        prepare_dynamic_jit,
        prepare_jit,
        quantize_dynamic_jit,
        quantize_jit,
        script_qconfig,
        script_qconfig_dict,
    )
    from qgraph.capture import capture
    from qgraph.compare import compare
    from qgraph.draw import draw
    from qgraph.quant.calibrators import EntropyObserver, MSEObserver, PercentileObserver
    from qgraph.quant.merge import all_reduce_observers, merge_observers
    from qgraph.sensitivity import sensitivity

# Public name -> the module that defines it.
_PUBLIC = {
    "EntropyObserver": "qgraph.quant.calibrators",
    "MSEObserver": "qgraph.quant.calibrators",
    "PercentileObserver": "qgraph.quant.calibrators",
    "all_reduce_observers": "qgraph.quant.merge",
    "capture": "qgraph.capture",
    "compare": "qgraph.compare",
    "convert_dynamic_jit": "qgraph.api",
    "convert_jit": "qgraph.api",
    "draw": "qgraph.draw",
    "fuse_conv_bn_jit": "qgraph.api",
    "merge_observers": "qgraph.quant.merge",
    "prepare_dynamic_jit": "qgraph.api",
    "prepare_jit": "qgraph.api",
    "quantize_dynamic_jit": "qgraph.api",
    "quantize_jit": "qgraph.api",
    "script_qconfig": "qgraph.api",
    "script_qconfig_dict": "qgraph.api",
    "sensitivity": "qgraph.sensitivity",
}

__all__ = [
    "EntropyObserver",
    "MSEObserver",
    "PercentileObserver",
    "all_reduce_observers",
    "capture",
    "compare",
    "convert_dynamic_jit",
    "convert_jit",
    "draw",
    "fuse_conv_bn_jit",
    "merge_observers",
    "prepare_dynamic_jit",
    "prepare_jit",
    "quantize_dynamic_jit",
    "quantize_jit",
    "script_qconfig",
    "script_qconfig_dict",
    "sensitivity",
]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'qgraph' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


class _Package(types.ModuleType):
    """Keeps ``qgraph.capture`` (``compare``, ``draw``, ...) the function when its module is first imported.

    The import system binds a newly loaded submodule to the attribute of
    its name on the package; a public function of the same name wins, as
    it did when the package imported it eagerly.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _PUBLIC and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

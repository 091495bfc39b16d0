"""qgraph: graph-mode quantization of TorchScript models.

A drop-in for ``torch.ao.quantization``'s JIT API whose passes are written in
Python and can be inspected after every stage (``qgraph.pipeline.inspect``).

The entry points load on first use, so ``import qgraph.ir`` (the IR toolkit,
which knows nothing of quantization) does not pull in the pipelines.
"""

import importlib

_PUBLIC = {
    "capture": "qgraph.capture",
    "convert_dynamic_jit": "qgraph.api",
    "convert_jit": "qgraph.api",
    "fuse_conv_bn_jit": "qgraph.api",
    "prepare_dynamic_jit": "qgraph.api",
    "prepare_jit": "qgraph.api",
    "quantize_dynamic_jit": "qgraph.api",
    "quantize_jit": "qgraph.api",
    "script_qconfig": "qgraph.api",
    "script_qconfig_dict": "qgraph.api",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'qgraph' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__():
    return __all__

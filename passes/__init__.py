"""qgraph's rewrites of TorchScript IR, one module per pass, each usable alone.

Attributes load on first use, so ``import passes`` stays cheap and a user
who needs one pass does not import the others.
"""

import importlib

_PASSES = {
    "fold_conv_bn": "passes.fold_conv_bn",
    "canonicalize_conv": "passes.canonicalize_conv",
    "fuse_linear": "passes.fuse_linear",
    "swap_functional_linear": "passes.swap_functional_linear",
    "dedup_module_uses": "passes.dedup_module_uses",
    "replicate_dequantize": "passes.replicate_dequantize",
    "replicate_quantize": "passes.replicate_quantize",
    "insert_observers": "passes.insert_observers",
    "insert_quant_dequant": "passes.insert_quant_dequant",
    "finalize": "passes.finalize",
    "quantize_rnn": "passes.quantize_rnn",
}

__all__ = sorted(_PASSES)


def __getattr__(name):
    module = _PASSES.get(name)
    if module is None:
        raise AttributeError(f"module 'passes' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__():
    return __all__

"""PyTorch's composite passes, as sequences of qgraph's passes in PyTorch's order.

PyTorch's ``insert_observers`` cleans up the graphs it observes first, its
``insert_quant_dequant`` carries quantization through the ops that need no
observer after inserting, and its ``finalize`` lowers to quantized kernels
in several steps. Here each step is a pass of its own, and each sequence a
list of ``qgraph.pipeline.Stage`` defined once, below:

- ``observer_preprocessing_stages``: swap functional linear (every method of
  every module), inline fork/wait, fuse linear, canonicalize traced convs,
  fold list mutation into list constructs (the methods reachable from the
  observed one);
- ``unshare_qconfig_types_stage`` (``unshare_op_qconfig_types_stage`` once
  more after the clean-up), ``insert_observers_stage``;
- ``quant_dequant_stages``: quantize / dequantize insertion, inlining,
  constant propagation, then the carrying of quantization through
  (``passes.quant_dequant.propagate``, ``replicate_quantize``,
  ``replicate_dequantize``);
- ``finalize_stages``: prepack / unpack, unsafe convs kept float, quant
  fusion, freeze, prepacking folded, clean-up;
- ``onednn_lowering_stages``, the second lowering beside ``finalize_stages``:
  oneDNN's int8 ops on plain integer tensors (``passes.lower_onednn``), and
  ``onednn_module_state_stage``, which convert runs after legalization.

The driver's pipelines (``qgraph.prepare``, ``qgraph.convert``) splice these
lists, so ``qgraph.pipeline.inspect`` shows every step and each runs once.
The standalone functions (``insert_observers``, ``insert_quant_dequant``,
``finalize``, exported by ``passes``) run the same lists on their own, as
PyTorch's passes of the same names do.

The sequences live in three modules, one per PyTorch pass:
``passes.composite.observers``, ``passes.composite.quant_dequant`` and
``passes.composite.lowering``; every name is re-exported here.
"""

from passes.composite.lowering import (
    cleanup_stage,
    finalize,
    finalize_stages,
    legalize_stage,
    onednn_lowering_stages,
    onednn_module_state_stage,
)
from passes.composite.observers import (
    insert_observers,
    insert_observers_stage,
    observer_preprocessing_stages,
    unshare_op_qconfig_types_stage,
    unshare_qconfig_types_stage,
)
from passes.composite.quant_dequant import insert_quant_dequant, quant_dequant_stages

__all__ = [
    "observer_preprocessing_stages",
    "unshare_qconfig_types_stage",
    "unshare_op_qconfig_types_stage",
    "insert_observers_stage",
    "quant_dequant_stages",
    "finalize_stages",
    "onednn_lowering_stages",
    "onednn_module_state_stage",
    "cleanup_stage",
    "legalize_stage",
    "insert_observers",
    "insert_quant_dequant",
    "finalize",
]

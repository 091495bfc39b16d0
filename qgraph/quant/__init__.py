"""Quantization facts and rules over TorchScript IR: what every pass agrees on, written once.

- ``quant_type``: the ``QuantType`` a caller means ("static", "dynamic", ...);
- ``scalar_types``: the numbers TorchScript stores for dtypes and qschemes;
- ``ops``: the op tables (quantizable ops, weights and biases, ops that keep
  their input's quantization, fixed output qparams, prepacking ops);
- ``observed_values``: which values observer insertion looks at;
- ``quantized_values``: which values of a converted graph hold quantized tensors;
- ``observers``: observer submodules in graphs, what they are and what they saw;
- ``qconfig``: ``qconfig_dict`` resolution to module paths, scripted observers;
- ``float_ops``: records of the ops convert leaves in float on purpose;
- ``packed_params``: packed weights kept as module attributes;
- ``kernels``: PyTorch kernel bugs that decide what must not run quantized;
- ``float_bins``: a histogram whose bins are fixed by the float32 format;
- ``range_search``: quantization ranges chosen from it (percentile, KL divergence, least squares);
- ``calibrators``: the observers built on them (``PercentileObserver``, ``EntropyObserver``, ``MSEObserver``);
- ``merge``: combining the observers of separate calibrations (``merge_observers``, ``all_reduce_observers``).

Everything here builds on ``qgraph.ir`` and ``qgraph.pattern`` and is used by
the passes and the driver; nothing here runs a pass.
"""

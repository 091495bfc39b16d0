"""Quantization rules that the passes and the driver share.

- ``float_bins``: a histogram whose bins are fixed by the float32 format;
- ``range_search``: quantization ranges chosen from it (percentile, KL divergence, least squares);
- ``calibrators``: the observers built on them (``PercentileObserver``, ``EntropyObserver``, ``MSEObserver``);
- ``merge``: combining the observers of separate calibrations (``merge_observers``, ``all_reduce_observers``).
"""

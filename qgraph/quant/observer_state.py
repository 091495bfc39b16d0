"""What a calibrated observer saw, read from its running statistics.

PyTorch's observers keep the range they saw in ``min_val`` / ``max_val``
tensors: per-tensor observers start at (+inf, -inf), per-channel ones start
empty, and both stay so when calibration never ran them or fed them only
empty tensors (observers skip those). Observers without these statistics
(``PlaceholderObserver``, ``FixedQParamsObserver``, a user's own class) have
nothing to check and always count as calibrated.

``HistogramObserver`` searches its histogram for the range with the least
quantization error. Its error terms are float32; once a range passes about
1e14 they overflow, the search never stops early, and each
``calculate_qparams`` walks 10^5 steps (about a second) to clip the range
to a few bins. Activations that large are out of any range int8 can
represent usefully, so convert warns about them and takes the observer's
whole range instead of searching (``QUANTIZABLE_RANGE``).
"""

from __future__ import annotations

import math

import torch

from qgraph.ir import CppModule

__all__ = [
    "QUANTIZABLE_RANGE",
    "saw_no_data",
    "saw_non_finite",
    "observed_magnitude",
    "searches_histogram",
    "whole_range_qparams",
]

# Largest activation magnitude convert accepts as quantizable; see the module docstring.
QUANTIZABLE_RANGE = 1e14


def _statistics(observer: CppModule) -> tuple[torch.Tensor, torch.Tensor] | None:
    if not (observer.hasattr("min_val") and observer.hasattr("max_val")):
        return None
    low, high = observer.getattr("min_val"), observer.getattr("max_val")
    if not (isinstance(low, torch.Tensor) and isinstance(high, torch.Tensor)):
        return None
    return low, high


def saw_no_data(observer: CppModule) -> bool:
    """Whether the observer never saw a value (its statistics are still the initial ones)."""
    stats = _statistics(observer)
    if stats is None:
        return False
    low, high = stats
    if low.numel() == 0 or high.numel() == 0:
        return True
    return bool((low == math.inf).all() and (high == -math.inf).all())


def saw_non_finite(observer: CppModule) -> bool:
    """Whether the observer's statistics hold NaN or an infinity from the data it saw."""
    stats = _statistics(observer)
    if stats is None or saw_no_data(observer):
        return False
    low, high = stats
    return not bool(torch.isfinite(low).all() and torch.isfinite(high).all())


def observed_magnitude(observer: CppModule) -> float:
    """The largest absolute value the observer saw (0.0 when it saw none or has no statistics)."""
    stats = _statistics(observer)
    if stats is None or saw_no_data(observer) or saw_non_finite(observer):
        return 0.0
    low, high = stats
    return max(low.abs().max().item(), high.abs().max().item())


def searches_histogram(observer: CppModule) -> bool:
    """A ``HistogramObserver`` (or a subclass): its qparams come from the histogram search."""
    return observer._has_method("_non_linear_param_search") and observer._has_method("_calculate_qparams")


def whole_range_qparams(observer: CppModule) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero point) covering everything the observer saw, without the histogram search."""
    stats = _statistics(observer)
    if stats is None:
        raise ValueError(f"observer {observer._type().qualified_name()} keeps no min_val / max_val statistics")
    return observer._get_method("_calculate_qparams")(*stats)

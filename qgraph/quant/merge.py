"""Combining calibrations: two observers (or two prepared copies of one model) that saw different data.

``merge_observers(a, b)`` gives the observer that one pass over both data
sets would have given, where the observer's state allows it:

- min-max observers (``MinMaxObserver``, ``PerChannelMinMaxObserver``):
  exact, the minimum of the minima and the maximum of the maxima;
- ``FloatBinObserver`` and its calibrators (``PercentileObserver``,
  ``EntropyObserver``, ``MSEObserver``): exact. Their bins are fixed by the
  float format, so the merged counts, minimum and maximum are bit for bit
  those of one pass over all the data, and so are the qparams;
- ``HistogramObserver``: approximate. Its bins span the range it saw, so
  both histograms are spread over equal bins of the joined range (each
  count uniform within its old bin) and added. Where two ranges are equal
  this is exact; otherwise a count moves by less than one old bin, so the
  cumulative count at any new bin edge differs from that of the data
  binned directly by at most the two old bins that straddle the edge (one
  of ``a``, one of ``b``). One pass is no better: ``HistogramObserver``
  rebins the same way whenever a batch widens its range, so its own result
  depends on the order of the batches;
- moving-average observers are refused: their state is an average
  weighted by the order of the batches, which no merge can reproduce;
- other observers (``PlaceholderObserver``, ``FixedQParamsObserver``, ...)
  merge when their buffers are equal (their qparams do not depend on data).

``all_reduce_observers(model)`` does the same across the processes of a
``torch.distributed`` group, with collective operations on the state.
"""

import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.ao.quantization.observer import ObserverBase

from qgraph.ir import CppModule, as_python

__all__ = ["all_reduce_observers", "merge_observers", "observers_of"]


def _as_module(module: Any) -> torch.nn.Module:
    if isinstance(module, CppModule):
        return as_python(module)
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"expected an observer or a model (nn.Module or ScriptModule), got {type(module).__name__}")
    return module


def _is_observer(module: torch.nn.Module) -> bool:
    if isinstance(module, ObserverBase):
        return True
    if not isinstance(module, torch.jit.ScriptModule):
        return False
    # A scripted observer: PyTorch's interface on a leaf module (a fake-quantize module holds its observer).
    return module._c._has_method("calculate_qparams") and module._c.hasattr("dtype") and not any(module.children())


def observers_of(model: Any) -> Iterator[tuple[str, Any]]:
    """(dotted path, observer) for the observer ``model`` is, or every observer submodule it holds."""
    module = _as_module(model)
    for path, submodule in module.named_modules():
        if _is_observer(submodule):
            yield path, submodule


def _class_name(module: Any) -> str:
    return module.original_name if isinstance(module, torch.jit.ScriptModule) else type(module).__name__


def _kind(observer: Any) -> str:
    if hasattr(observer, "bin_counts"):
        return "float bins"
    if hasattr(observer, "averaging_constant"):
        return "moving average"
    if hasattr(observer, "histogram") and hasattr(observer, "bins"):
        return "histogram"
    if hasattr(observer, "min_val") and hasattr(observer, "max_val"):
        return "min-max"
    return "other"


def _never_ran(observer: Any) -> bool:
    low = observer.min_val
    return low.numel() == 0 or bool((low == float("inf")).all() and (observer.max_val == float("-inf")).all())


def _set(observer: Any, name: str, value: Tensor) -> None:
    setattr(observer, name, value.to(getattr(observer, name).dtype))


def _rebinned(histogram: Tensor, low: Tensor, high: Tensor, new_low: Tensor, new_high: Tensor) -> Tensor:
    """``histogram`` over [low, high] spread over as many equal bins of [new_low, new_high] (uniform within bins)."""
    bins = histogram.numel()
    counts = histogram.to(torch.float64)
    if bool(low == new_low) and bool(high == new_high):
        return counts
    new_edges = torch.linspace(float(new_low), float(new_high), bins + 1, dtype=torch.float64)
    if float(high) <= float(low):
        # A single value: all counts sit at that point.
        below = (new_edges >= float(low)).to(torch.float64) * counts.sum()
    else:
        edges = torch.linspace(float(low), float(high), bins + 1, dtype=torch.float64)
        cumulative = torch.cat([torch.zeros(1, dtype=torch.float64), counts.cumsum(0)])
        segment = (torch.searchsorted(edges, new_edges, right=True) - 1).clamp(0, bins - 1)
        share = ((new_edges - edges[segment]) / (edges[segment + 1] - edges[segment])).clamp(0.0, 1.0)
        below = cumulative[segment] + share * counts[segment]
    below[-1] = counts.sum()
    return below.diff().clamp(min=0.0)


def _merge_histograms(target: Any, other: Any) -> None:
    if target.histogram.numel() != other.histogram.numel():
        raise ValueError(f"histograms of {target.histogram.numel()} and {other.histogram.numel()} bins cannot merge")
    low = torch.minimum(target.min_val, other.min_val)
    high = torch.maximum(target.max_val, other.max_val)
    merged = _rebinned(target.histogram, target.min_val, target.max_val, low, high) + _rebinned(
        other.histogram, other.min_val, other.max_val, low, high
    )
    _set(target, "histogram", merged)
    _set(target, "min_val", low)
    _set(target, "max_val", high)


def _merge_pair(target: Any, other: Any, where: str) -> None:
    kind = _kind(target)
    if kind != _kind(other) or _class_name(target) != _class_name(other):
        raise ValueError(f"observers at {where} differ: {_class_name(target)} and {_class_name(other)}")
    if kind == "moving average":
        raise TypeError(
            f"the observer at {where} keeps a moving average, which depends on the order of the batches; "
            "calibrate with MinMaxObserver / PerChannelMinMaxObserver (or another mergeable observer) to merge"
        )
    if kind == "other":
        mine, theirs = dict(target.named_buffers()), dict(other.named_buffers())
        if mine.keys() != theirs.keys() or not all(torch.equal(mine[k], theirs[k]) for k in mine):
            raise TypeError(f"no rule merges the observer at {where} ({_class_name(target)}): its state differs")
        return
    if _never_ran(other):
        return
    if _never_ran(target):
        for name, value in other.named_buffers():
            _set(target, name, value.clone())
        return
    if kind == "histogram":
        _merge_histograms(target, other)
        return
    if target.min_val.shape != other.min_val.shape:
        raise ValueError(
            f"observers at {where} saw differently shaped values ({tuple(target.min_val.shape)} and "
            f"{tuple(other.min_val.shape)})"
        )
    if kind == "float bins":
        if target.bin_counts.shape != other.bin_counts.shape:
            raise ValueError(f"observers at {where} have different mantissa_bits")
        _set(target, "bin_counts", target.bin_counts + other.bin_counts)
    _set(target, "min_val", torch.minimum(target.min_val, other.min_val))
    _set(target, "max_val", torch.maximum(target.max_val, other.max_val))


def _pairs(target: Any, other: Any) -> list[tuple[str, torch.nn.Module, torch.nn.Module]]:
    mine, theirs = dict(observers_of(target)), dict(observers_of(other))
    if not mine:
        raise ValueError("found no observer to merge: pass observers, or models prepared for calibration")
    if mine.keys() != theirs.keys():
        missing = sorted(mine.keys() ^ theirs.keys())
        raise ValueError(f"the two models hold different observers (only in one of them: {missing[:5]})")
    return [(path, mine[path], theirs[path]) for path in mine]


def merge_observers(a: Any, b: Any, inplace: bool = False) -> Any:
    """The calibration of ``a`` and ``b`` together: an observer, or a prepared model, holding both.

    ``a`` and ``b`` are two observers of one kind, or two prepared copies of
    one model (eager ``torch.ao.quantization.prepare`` or ``qgraph.prepare_jit``),
    calibrated on different data; every observer of ``b`` is merged into the
    one at the same path of ``a``. Returns a merged copy of ``a`` (``a``
    itself, changed, with ``inplace=True``); ``b`` is never changed. How
    exact the merge is depends on the observer (module docstring).

    >>> merged = qgraph.merge_observers(prepared_on_shard_0, prepared_on_shard_1)
    >>> quantized = qgraph.convert_jit(merged)
    """
    target = a if inplace else copy.deepcopy(a)
    for path, mine, theirs in _pairs(target, b):
        _merge_pair(mine, theirs, repr(path or "the observer"))
    return target


def _reduce_min_max(observer: Any, group: Any) -> None:
    import torch.distributed as dist

    shape = observer.min_val.shape
    low, high = observer.min_val.reshape(-1).clone(), observer.max_val.reshape(-1).clone()
    if len(shape) == 1:
        # A per-channel observer that never ran is empty; it takes the others' channel count.
        channels = torch.tensor([low.numel()])
        dist.all_reduce(channels, dist.ReduceOp.MAX, group=group)
        if low.numel() == 0 and int(channels) > 0:
            low = torch.full((int(channels),), float("inf"))
            high = torch.full((int(channels),), float("-inf"))
    dist.all_reduce(low, dist.ReduceOp.MIN, group=group)
    dist.all_reduce(high, dist.ReduceOp.MAX, group=group)
    if len(shape) == 1 and bool((low == float("inf")).all()):
        low, high = low[:0], high[:0]
    _set(observer, "min_val", low if len(shape) == 1 else low.reshape(shape))
    _set(observer, "max_val", high if len(shape) == 1 else high.reshape(shape))


def all_reduce_observers(model: Any, group: Any = None) -> Any:
    """Merge every observer of ``model`` with its counterparts in the other processes of ``group``, in place.

    Each process holds a copy of one prepared model (or one observer),
    calibrated on its own share of the data; afterwards every process holds
    the merged calibration, the same as ``merge_observers`` over all of them
    (and with the same exactness). Min-max states are all-reduced with MIN
    and MAX, ``FloatBinObserver`` counts with SUM; a ``HistogramObserver``
    first agrees on the joined range, then spreads its histogram over it and
    sums. Observers whose state does not depend on data are left as they
    are; moving-average observers raise TypeError. Returns ``model``.
    """
    import torch.distributed as dist

    for path, observer in observers_of(model):
        kind = _kind(observer)
        if kind in ("moving average", "other"):
            _merge_pair(observer, observer, repr(path or "the observer"))
            continue
        if kind == "histogram":
            low, high = observer.min_val.clone(), observer.max_val.clone()
            histogram = observer.histogram
            was_empty = _never_ran(observer)
            _reduce_min_max(observer, group)
            if was_empty:
                spread = torch.zeros(histogram.numel(), dtype=torch.float64)
            else:
                spread = _rebinned(histogram, low, high, observer.min_val, observer.max_val)
            dist.all_reduce(spread, dist.ReduceOp.SUM, group=group)
            _set(observer, "histogram", spread)
            continue
        if kind == "float bins":
            counts = observer.bin_counts.clone()
            dist.all_reduce(counts, dist.ReduceOp.SUM, group=group)
            _set(observer, "bin_counts", counts)
        _reduce_min_max(observer, group)
    return model

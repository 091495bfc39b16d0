"""A histogram whose bins are fixed by the float32 format itself, so calibrations add up exactly.

A float32's bit pattern read as an integer grows with the value's magnitude
(for either sign), so its top ``9 + m`` bits (sign, exponent, the first
``m`` mantissa bits) name a bin: the values that truncate to one
``m``-bit-mantissa number. With ``m = 7`` (the default) the bins are the
bfloat16 numbers: 2^16 bins, each 2^-7 of its lower edge wide, from the
subnormals to the largest float, whatever the data. Because no bin depends
on what was seen, the counts of two calibrations add up to the counts of one
pass over both, exactly and in any order, with no rebinning.

Within a bin the values are taken as spread uniformly (edges tightened to
the exact minimum and maximum seen); on that model the functions below give
quantiles and the running count, sum and sum of squares at any point, which
is what the range searches in ``range_search`` need. Every function here is
TorchScript: the observers call them from scripted methods.
"""

import torch
from torch import Tensor

__all__ = [
    "bin_count",
    "count_bins",
    "cumulative_moments",
    "magnitude_edges",
    "magnitude_segments",
    "quantiles",
    "running_moments",
    "signed_segments",
]


def bin_count(mantissa_bits: int) -> int:
    """Bins of the histogram for ``mantissa_bits`` (sign, 8 exponent bits and those mantissa bits)."""
    if mantissa_bits < 0 or mantissa_bits > 23:
        raise ValueError("mantissa_bits must be between 0 and 23")
    return 1 << (9 + mantissa_bits)


def finite_bins(mantissa_bits: int) -> int:
    """Bins of one sign below the first that holds infinity (exponent field 255) and NaNs."""
    return 255 << mantissa_bits


def _count_float_bins(x: Tensor, mantissa_bits: int) -> Tensor:
    bits = x.detach().to(torch.float32).contiguous().view(torch.int32)
    index = torch.bitwise_and(
        torch.bitwise_right_shift(bits, 23 - mantissa_bits),
        bin_count(mantissa_bits) - 1,
    )
    return torch.bincount(index.flatten(), minlength=bin_count(mantissa_bits))


# TorchScript has no bit cast (Tensor.view(dtype)), and computing the bin
# from torch.frexp costs ten times more; scripted observers reach the cast
# through this operator, which any process that imports qgraph defines.
_library = torch.library.Library("qgraph", "FRAGMENT")
_library.define("count_float_bins(Tensor x, int mantissa_bits) -> Tensor")
_library.impl("count_float_bins", _count_float_bins, "CompositeExplicitAutograd")


def count_bins(x: Tensor, mantissa_bits: int) -> Tensor:
    """Counts (int64) of ``x``'s values in each bin: index = the top ``9 + mantissa_bits`` bits."""
    bin_count(mantissa_bits)
    return torch.ops.qgraph.count_float_bins(x, mantissa_bits)


def _lower_edges(index: Tensor, mantissa_bits: int) -> Tensor:
    """Lower edges (float64) of the magnitude bins ``index``: the floats whose bit pattern starts with it.

    Exponent field ``index >> mantissa_bits``, leading mantissa bits
    ``index % 2^mantissa_bits``; field 0 holds zero and the subnormals (no
    implicit leading 1, the scale of field 1).
    """
    exponent = torch.bitwise_right_shift(index, mantissa_bits)
    fraction = torch.bitwise_and(index, (1 << mantissa_bits) - 1).to(torch.float64) / (1 << mantissa_bits)
    scale = torch.pow(2.0, (exponent.clamp(min=1) - 127).to(torch.float64))
    return torch.where(exponent > 0, 1.0 + fraction, fraction) * scale


def magnitude_edges(mantissa_bits: int) -> Tensor:
    """Lower edges of all finite bins of one sign, by magnitude, then +inf (float64)."""
    lower = _lower_edges(torch.arange(finite_bins(mantissa_bits), dtype=torch.int64), mantissa_bits)
    return torch.cat([lower, torch.tensor([float("inf")], dtype=torch.float64)])


def _occupied(counts: Tensor) -> tuple[int, int]:
    """First and last index of a non-zero count, or (0, -1) for none."""
    index = torch.nonzero(counts).flatten()
    if index.numel() == 0:
        return 0, -1
    return int(index[0]), int(index[-1])


def _side(counts: Tensor, mantissa_bits: int) -> tuple[Tensor, Tensor]:
    """(edges, counts) of one sign's occupied bins by increasing magnitude, edges one longer."""
    first, last = _occupied(counts)
    index = torch.arange(first, last + 2, dtype=torch.int64)
    return _lower_edges(index, mantissa_bits), counts[first : last + 1].to(torch.float64)


def _finite_counts(counts: Tensor, mantissa_bits: int) -> tuple[Tensor, Tensor]:
    """(positive, negative) finite bin counts, each ordered by magnitude."""
    finite = finite_bins(mantissa_bits)
    half = bin_count(mantissa_bits) // 2
    return counts[:finite], counts[half : half + finite]


def signed_segments(counts: Tensor, min_val: float, max_val: float, mantissa_bits: int) -> tuple[Tensor, Tensor]:
    """(edges, counts) of the occupied bins in increasing order of value, from ``min_val`` to ``max_val``.

    ``edges`` has one more element than ``counts``; the outer edges are the
    exact extremes seen, the others bin edges. Between the smallest
    negative and the smallest positive magnitude one empty segment bridges
    zero.
    """
    positive, negative = _finite_counts(counts, mantissa_bits)
    edges_pos, weights_pos = _side(positive, mantissa_bits)
    edges_neg, weights_neg = _side(negative, mantissa_bits)
    if weights_neg.numel() == 0:
        return edges_pos.clamp(min_val, max_val), weights_pos
    if weights_pos.numel() == 0:
        return (-edges_neg.flip(0)).clamp(min_val, max_val), weights_neg.flip(0)
    edges = torch.cat([-edges_neg.flip(0), edges_pos])
    weights = torch.cat([weights_neg.flip(0), torch.zeros(1, dtype=torch.float64), weights_pos])
    return edges.clamp(min_val, max_val), weights


def magnitude_segments(counts: Tensor, min_val: float, max_val: float, mantissa_bits: int) -> tuple[Tensor, Tensor]:
    """(edges, counts) of the absolute values' occupied bins, up to ``max(|min_val|, |max_val|)``."""
    positive, negative = _finite_counts(counts, mantissa_bits)
    edges, weights = _side(positive + negative, mantissa_bits)
    return edges.clamp(0.0, max(abs(min_val), abs(max_val))), weights


def running_moments(edges: Tensor, weights: Tensor) -> Tensor:
    """Count, sum and sum of squares of the values below each edge: a (3, len(edges)) float64 table."""
    low = edges[:-1]
    high = edges[1:]
    per_segment = torch.stack(
        [
            weights,
            weights * (low + high) / 2,
            weights * (low * low + low * high + high * high) / 3,
        ]
    )
    return torch.cat([torch.zeros(3, 1, dtype=torch.float64), per_segment.cumsum(1)], 1)


def cumulative_moments(edges: Tensor, weights: Tensor, running: Tensor, points: Tensor) -> Tensor:
    """Count, sum and sum of squares of the values at or below each of ``points``: a (3, len(points)) table.

    ``running`` is ``running_moments(edges, weights)``.
    """
    segment = (torch.searchsorted(edges, points, right=True) - 1).clamp(0, weights.numel() - 1)
    a = edges[segment]
    width = edges[segment + 1] - a
    inside = torch.where(width > 0, (points - a) / width.clamp(min=1e-300), 1.0).clamp(0.0, 1.0)
    inside = torch.where((width > 0) | (points >= a), inside, 0.0)
    t = a + inside * width
    part = weights[segment] * inside
    return running[:, segment] + torch.stack([part, part * (a + t) / 2, part * (a * a + a * t + t * t) / 3])


def quantiles(edges: Tensor, weights: Tensor, fractions: Tensor) -> Tensor:
    """The values below which ``fractions`` (in [0, 1]) of the counts lie, interpolated within bins."""
    cumulative = weights.cumsum(0)
    target = fractions.to(torch.float64) * cumulative[-1]
    segment = torch.searchsorted(cumulative, target).clamp(0, weights.numel() - 1)
    before = cumulative[segment] - weights[segment]
    share = ((target - before) / weights[segment].clamp(min=1e-300)).clamp(0.0, 1.0)
    return edges[segment] + share * (edges[segment + 1] - edges[segment])

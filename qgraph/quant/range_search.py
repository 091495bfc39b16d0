"""Choosing a quantization range from a ``float_bins`` histogram: percentile, KL divergence, least squares.

Each function takes the histogram (``counts``), the exact extremes seen and
the quantization grid (``steps`` = quant_max - quant_min; ``symmetric`` for
the symmetric qschemes) and returns the range ``(low, high)`` to hand to the
observer's ``_calculate_qparams``. All of them are vectorized over their
candidate ranges and TorchScript, for the scripted observers.

- ``percentile_range``: the central ``percentile`` % of the values, cutting
  half of the rest from each tail (ONNX Runtime's convention); for symmetric
  schemes the ``percentile``-th percentile of the absolute values.
- ``entropy_range``: TensorRT's calibration. The absolute values go into
  ``bins`` equal bins up to the largest; for each candidate threshold the
  distribution P clipped there (outliers added to its last bin) is compared
  with Q, that distribution squeezed into as many levels as the grid has for
  one sign and spread back over P's non-empty bins; the threshold with the
  least KL(P || Q) wins. Coarse candidates every 16 bins, then every bin
  around the best. As in NVIDIA's pytorch-quantization the first bin takes
  its neighbour's count; fewer than 16 values per bin get fewer bins, and
  too few values for one bin per level keep the whole range.
- ``mse_range``: the range with the least expected squared error over the
  values seen, from clipping (exact, values beyond the range move to its
  end) and rounding (values within half a step of zero become zero; the
  others err by a step squared over 12, uniform rounding noise). Candidates
  are the extreme scaled by powers of 2^(-1/16) down to 2^-16 when one end
  is free; when both are (an affine range across zero), a grid of both ends
  every half octave; then finer grids around the best, to 2^(-1/256).
"""

import torch
from torch import Tensor

from qgraph.quant.float_bins import (
    cumulative_moments,
    magnitude_segments,
    quantiles,
    running_moments,
    signed_segments,
)

__all__ = ["entropy_range", "mse_range", "percentile_range"]


def _float64(values: list[float]) -> Tensor:
    """``values`` as a float64 tensor; TorchScript's ``torch.tensor`` (and item assignment) round through float32."""
    return torch.cat([torch.full([1], value, dtype=torch.float64) for value in values])


def percentile_range(
    counts: Tensor,
    min_val: float,
    max_val: float,
    mantissa_bits: int,
    percentile: float,
    symmetric: bool,
) -> tuple[float, float]:
    if symmetric:
        edges, weights = magnitude_segments(counts, min_val, max_val, mantissa_bits)
        threshold = float(quantiles(edges, weights, _float64([percentile / 100]))[0])
        return -threshold, threshold
    edges, weights = signed_segments(counts, min_val, max_val, mantissa_bits)
    cut = (1.0 - percentile / 100) / 2
    ends = quantiles(edges, weights, _float64([cut, 1.0 - cut]))
    return float(ends[0]), float(ends[1])


def _kl_divergences(histogram: Tensor, lengths: Tensor, levels: int) -> Tensor:
    """KL(P || Q) for thresholds at each of ``lengths`` bins, from prefix sums (no per-bin matrix).

    With H the counts of P (the last kept bin also holding the outliers), T
    their total, H_g their sum over level g, G_g the same before the
    outliers, n_g the level's non-empty bins and Q's count per non-empty
    bin q_g = G_g / n_g:
    KL = (sum H log H - sum_g H_g log q_g) / T - log T + log sum_g n_g q_g.
    """
    zero = torch.zeros(1, dtype=torch.float64)
    counts = torch.cat([zero, histogram.cumsum(0)])
    total = counts[-1]
    occupied = torch.cat([zero, (histogram > 0).to(torch.float64).cumsum(0)])
    entropy_terms = torch.cat([zero, torch.xlogy(histogram, histogram).cumsum(0)])
    # Level g holds bins [ceil(g L / levels), ceil((g + 1) L / levels)): the bins b with floor(b levels / L) = g.
    bounds = torch.div(
        torch.arange(levels + 1).unsqueeze(0) * lengths.unsqueeze(1) + levels - 1,
        levels,
        rounding_mode="floor",
    )
    group_sums = counts[bounds[:, 1:]] - counts[bounds[:, :-1]]
    group_occupied = occupied[bounds[:, 1:]] - occupied[bounds[:, :-1]]
    outliers = total - counts[lengths]
    last_bin = histogram[lengths - 1]
    last_p = last_bin + outliers
    outlier_only = ((last_bin == 0) & (outliers > 0)).to(torch.float64)
    group_occupied = torch.cat([group_occupied[:, :-1], (group_occupied[:, -1] + outlier_only).unsqueeze(1)], 1)
    p_groups = torch.cat([group_sums[:, :-1], (group_sums[:, -1] + outliers).unsqueeze(1)], 1)
    # A level that holds only outliers has nothing to spread in Q: a small count (as MXNet's smoothing) keeps KL finite.
    q_level = torch.where(group_sums > 0, group_sums / group_occupied.clamp(min=1.0), 1e-4)
    p_entropy = entropy_terms[lengths - 1] + torch.xlogy(last_p, last_p)
    cross = torch.xlogy(p_groups, q_level).sum(1)
    return (p_entropy - cross) / total - torch.log(total) + torch.log((group_occupied * q_level).sum(1))


def entropy_range(
    counts: Tensor,
    min_val: float,
    max_val: float,
    mantissa_bits: int,
    levels: int,
    bins: int,
) -> tuple[float, float]:
    edges, weights = magnitude_segments(counts, min_val, max_val, mantissa_bits)
    # A sparse histogram has levels of one occupied bin at any threshold, where Q equals P: KL then
    # rewards clipping whatever the cost. Fewer values than 16 per bin get fewer bins, and too few for
    # one bin per level keep the whole range.
    bins = min(bins, int(weights.sum()) // 16)
    if bins < levels:
        return min_val, max_val
    largest = float(edges[-1])
    points = torch.linspace(0.0, largest, bins + 1, dtype=torch.float64)
    below = cumulative_moments(edges, weights, running_moments(edges, weights), points)[0]
    histogram = below.diff()
    # The first bin takes its neighbour's count, as NVIDIA's pytorch-quantization does: a ReLU output's
    # exact zeros (often half the values) would otherwise decide the threshold, pulling it down to where
    # each level is one bin.
    histogram[0] = histogram[1]
    lengths = torch.arange(levels, bins + 1, 16)
    best = int(lengths[int(torch.argmin(_kl_divergences(histogram, lengths, levels)))])
    lengths = torch.arange(max(levels, best - 15), min(bins, best + 15) + 1)
    best = int(lengths[int(torch.argmin(_kl_divergences(histogram, lengths, levels)))])
    threshold = best * largest / bins
    return max(min_val, -threshold), min(max_val, threshold)


def _squared_errors(
    edges: Tensor,
    weights: Tensor,
    running: Tensor,
    lows: Tensor,
    highs: Tensor,
    scales: Tensor,
) -> Tensor:
    """Expected squared error of quantizing the histogram's values to each range (see the module docstring)."""
    points = torch.cat(
        [
            lows,
            highs,
            torch.maximum(lows, -scales / 2),
            torch.minimum(highs, scales / 2),
        ]
    )
    below = cumulative_moments(edges, weights, running, points).view(3, 4, -1)
    low, high, zero_low, zero_high = below.unbind(1)
    above = running[:, -1:] - high
    clipped = (
        low[2] - 2 * lows * low[1] + lows * lows * low[0] + above[2] - 2 * highs * above[1] + highs * highs * above[0]
    )
    to_zero = (zero_high - zero_low).clamp(min=0.0)
    return clipped + (high[0] - low[0] - to_zero[0]) * scales * scales / 12 + to_zero[2]


def mse_range(
    counts: Tensor,
    min_val: float,
    max_val: float,
    mantissa_bits: int,
    steps: float,
    symmetric: bool,
) -> tuple[float, float]:
    if symmetric:
        edges, weights = magnitude_segments(counts, min_val, max_val, mantissa_bits)
        reach_low, reach_high = 0.0, float(edges[-1])
    else:
        edges, weights = signed_segments(counts, min_val, max_val, mantissa_bits)
        reach_low, reach_high = min(min_val, 0.0), max(max_val, 0.0)
    running = running_moments(edges, weights)
    both_ends = reach_low < 0.0 and reach_high > 0.0
    # Each end is its extreme times 2^-u, u in [0, 16] octaves: every 1/16 octave for one end (every half
    # octave for both), then finer grids around the best, to 1/256 octave.
    steps_and_widths = [(0.5, 16), (1.0 / 16, 8), (1.0 / 256, 8)] if both_ends else [(1.0 / 16, 128), (1.0 / 256, 8)]
    centre_low, centre_high = 8.0, 8.0
    for step, half_width in steps_and_widths:
        offsets = step * torch.arange(-half_width, half_width + 1, dtype=torch.float64)
        grid_low = (centre_low + offsets).clamp(0.0, 16.0) if both_ends else torch.zeros(1, dtype=torch.float64)
        grid_high = (centre_high + offsets).clamp(0.0, 16.0)
        if not both_ends and reach_high == 0.0:
            grid_low, grid_high = grid_high, grid_low
        u_low, u_high = torch.meshgrid(grid_low, grid_high, indexing="ij")
        lows = (reach_low * torch.exp2(-u_low)).flatten()
        highs = (reach_high * torch.exp2(-u_high)).flatten()
        scales = highs / (steps / 2) if symmetric else (highs - lows) / steps
        best = int(torch.argmin(_squared_errors(edges, weights, running, lows, highs, scales)))
        centre_low = float(u_low.flatten()[best])
        centre_high = float(u_high.flatten()[best])
    if symmetric:
        threshold = reach_high * 2.0 ** (-centre_high)
        return -threshold, threshold
    return reach_low * 2.0 ** (-centre_low), reach_high * 2.0 ** (-centre_high)

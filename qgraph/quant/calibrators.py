"""Calibrators beyond min-max and histogram: percentile, entropy (KL divergence) and least squares.

Each is an observer with PyTorch's interface (``forward`` records, ``calculate_qparams``
answers, ``with_args`` configures), so it goes wherever PyTorch's observers go::

    from torch.ao.quantization import QConfig, default_per_channel_weight_observer
    qconfig = QConfig(activation=qgraph.MSEObserver.with_args(reduce_range=True),
                      weight=default_per_channel_weight_observer)
    prepared = qgraph.prepare_jit(scripted, {"": qconfig})     # or torch.ao.quantization.prepare

All three record the same state: ``min_val`` / ``max_val`` as ``MinMaxObserver``
does, and ``bin_counts``, a histogram with one bin per bfloat16 value
(``float_bins``) that never rebins. Recording is a bit shift and a
``bincount``; two calibrations merge exactly by adding counts
(``qgraph.merge_observers``). Only ``calculate_qparams`` differs: each picks
its range from the histogram (``range_search``) and hands it to PyTorch's own
qparams formula, so scale and zero point follow the qscheme, dtype and
``reduce_range`` exactly as ``MinMaxObserver`` would for that range.

Per-tensor qschemes only (activations, or per-tensor weights).
"""

import math
import warnings
from typing import Any

import torch
from torch import Tensor
from torch.ao.quantization.observer import UniformQuantizationObserverBase

from qgraph.quant.float_bins import bin_count, count_bins
from qgraph.quant.range_search import entropy_range, mse_range, percentile_range

__all__ = ["EntropyObserver", "FloatBinObserver", "MSEObserver", "PercentileObserver"]


class FloatBinObserver(UniformQuantizationObserverBase):
    """Records min, max and a fixed-bin histogram of everything it sees; subclasses choose the range.

    ``mantissa_bits`` sets the bins' resolution: 2^(9 + mantissa_bits) bins,
    each 2^-mantissa_bits of its lower edge wide (7: 65,536 bins, 0.8 %).
    On its own it gives the min-max range.
    """

    min_val: torch.Tensor
    max_val: torch.Tensor
    bin_counts: torch.Tensor

    def __init__(
        self,
        mantissa_bits: int = 7,
        dtype: torch.dtype = torch.quint8,
        qscheme: torch.qscheme = torch.per_tensor_affine,
        reduce_range: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
        factory_kwargs: dict | None = None,
        eps: float = torch.finfo(torch.float32).eps,
        is_dynamic: bool = False,
        **kwargs: Any,
    ) -> None:
        if qscheme not in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            raise ValueError(f"{type(self).__name__} takes a per-tensor qscheme, got {qscheme}")
        if is_dynamic:
            raise ValueError(f"{type(self).__name__} calibrates static quantization; is_dynamic must be False")
        super().__init__(
            dtype=dtype,
            qscheme=qscheme,
            reduce_range=reduce_range,
            quant_min=quant_min,
            quant_max=quant_max,
            factory_kwargs=factory_kwargs,
            eps=eps,
            is_dynamic=is_dynamic,
            **kwargs,
        )
        factory_kwargs = torch.nn.factory_kwargs(factory_kwargs)
        self.mantissa_bits = mantissa_bits
        self.register_buffer("min_val", torch.tensor(float("inf"), **factory_kwargs))
        self.register_buffer("max_val", torch.tensor(float("-inf"), **factory_kwargs))
        self.register_buffer("bin_counts", torch.zeros(bin_count(mantissa_bits), dtype=torch.int64))

    def forward(self, x_orig: Tensor) -> Tensor:
        if x_orig.numel() == 0:
            return x_orig
        x = x_orig.detach()
        low, high = torch.aminmax(x.to(self.min_val.dtype))
        self.min_val.copy_(torch.min(low, self.min_val))
        self.max_val.copy_(torch.max(high, self.max_val))
        self.bin_counts.add_(count_bins(x, self.mantissa_bits).to(self.bin_counts.device))
        return x_orig

    def _search_range(self, low: float, high: float) -> tuple[float, float]:
        return low, high

    @torch.jit.export
    def calculate_qparams(self) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        low = float(self.min_val)
        high = float(self.max_val)
        if low == math.inf and high == -math.inf:
            warnings.warn(
                "must run observer before calling calculate_qparams. Returning default scale and zero point",
                stacklevel=2,
            )
            return torch.tensor([1.0]), torch.tensor([0])
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"the observer saw NaN or infinite values (min {low}, max {high}); they have no range")
        if low < high:
            low, high = self._search_range(low, high)
        device = self.min_val.device
        return self._calculate_qparams(
            torch.tensor(low, dtype=torch.float32, device=device),
            torch.tensor(high, dtype=torch.float32, device=device),
        )

    def _symmetric(self) -> bool:
        return self.qscheme == torch.per_tensor_symmetric

    @torch.jit.ignore
    def extra_repr(self) -> str:
        return f"min_val={self.min_val}, max_val={self.max_val}, mantissa_bits={self.mantissa_bits}"


class PercentileObserver(FloatBinObserver):
    """The range that keeps ``percentile`` % of the values seen and clips the rest.

    Affine: half of the other ``100 - percentile`` % is cut from each tail (as
    ONNX Runtime does); symmetric: the ``percentile``-th percentile of the
    absolute values. Percentiles are interpolated within a bin (uniform values
    there), to within one bin width (2^-7 of the value by default).
    """

    def __init__(self, percentile: float = 99.99, mantissa_bits: int = 7, **kwargs: Any) -> None:
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        super().__init__(mantissa_bits=mantissa_bits, **kwargs)
        self.percentile = percentile

    def _search_range(self, low: float, high: float) -> tuple[float, float]:
        return percentile_range(
            self.bin_counts,
            low,
            high,
            self.mantissa_bits,
            self.percentile,
            self._symmetric(),
        )


class EntropyObserver(FloatBinObserver):
    """TensorRT's entropy calibration: the threshold on |x| whose clipped distribution loses the least information.

    The absolute values go into ``bins`` equal bins (2048, as TensorRT); the
    threshold minimises KL(P || Q) between the clipped distribution P and its
    quantized copy Q with as many levels as the quantized grid has for one
    sign (``range_search.entropy_range``). The range is the threshold on each
    side that has values (``[0, t]`` for a ReLU output), never past the
    extremes seen.
    """

    def __init__(self, bins: int = 2048, mantissa_bits: int = 7, **kwargs: Any) -> None:
        super().__init__(mantissa_bits=mantissa_bits, **kwargs)
        if bins < 2:
            raise ValueError(f"bins must be at least 2, got {bins}")
        self.bins = bins

    def _search_range(self, low: float, high: float) -> tuple[float, float]:
        levels = self.quant_max - self.quant_min + 1
        if low < 0.0 and high > 0.0:
            levels = levels // 2
        return entropy_range(self.bin_counts, low, high, self.mantissa_bits, levels, self.bins)


class MSEObserver(FloatBinObserver):
    """The range with the least expected squared quantization error over the values seen.

    Clipping error is exact on the histogram, rounding error is modelled
    (values within half a step of zero become zero, the others err by
    step^2 / 12); the search is vectorized over a grid of both range ends
    to within 2^(-1/256) (``range_search.mse_range``).
    """

    def _search_range(self, low: float, high: float) -> tuple[float, float]:
        steps = float(self.quant_max - self.quant_min)
        return mse_range(self.bin_counts, low, high, self.mantissa_bits, steps, self._symmetric())

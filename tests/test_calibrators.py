"""The percentile, entropy and MSE observers: their histogram, their ranges on hand-computed data, and their use.

Each calibrator's range is checked on data whose answer follows by hand
from its definition (module docstrings of ``qgraph.quant.range_search``);
then scripting, saving, qgraph's prepare_jit / convert_jit (equal bit for
bit to PyTorch's graph mode given the same observers) and eager
prepare / convert.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.ao.quantization import (
    DeQuantStub,
    MinMaxObserver,
    QConfig,
    QuantStub,
    default_per_channel_weight_observer,
)
from torch.ao.quantization import convert as eager_convert
from torch.ao.quantization import prepare as eager_prepare
from torch.ao.quantization import quantize_jit as reference_quantize_jit

import qgraph
from examples.models import ResNetLike, calibration_batches, randomize_batchnorm
from helpers.models import calibrate, reloaded
from helpers.numerics import assert_bitwise_equal, sqnr
from qgraph.quant.calibrators import FloatBinObserver
from qgraph.quant.float_bins import count_bins, magnitude_edges
from qgraph.quant.range_search import _kl_divergences

CALIBRATORS = [qgraph.PercentileObserver, qgraph.EntropyObserver, qgraph.MSEObserver]


def observed(observer: nn.Module, *tensors: torch.Tensor) -> nn.Module:
    calibrate(observer, tensors)
    return observer


def expected_affine(low: float, high: float, quant_max: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch's affine qparams for the range [low, high] (MinMaxObserver's formula)."""
    observer = MinMaxObserver(quant_min=0, quant_max=quant_max)
    return observer._calculate_qparams(torch.tensor(low), torch.tensor(high))


def uniform_bulk(count: int = 1 << 20) -> torch.Tensor:
    """``count`` evenly spaced values filling [0, 1]."""
    return ((torch.arange(count, dtype=torch.float64) + 0.5) / count).float()


# --- the histogram -------------------------------------------------------------------------------------


def test_bins_are_the_top_bits_of_the_float32_pattern():
    values = torch.cat(
        [
            torch.randn(10_000) * torch.exp(torch.randn(10_000) * 8),
            torch.tensor([0.0, -0.0, 1e-40, -1e-45, 3.4e38, float("inf"), float("-inf"), float("nan")]),
        ]
    )
    for mantissa_bits in (0, 7, 10):
        index = (values.view(torch.int32) >> (23 - mantissa_bits)) & ((1 << (9 + mantissa_bits)) - 1)
        expected = torch.bincount(index.long(), minlength=1 << (9 + mantissa_bits))
        assert torch.equal(count_bins(values, mantissa_bits), expected)
        edges = (torch.arange((255 << mantissa_bits) + 1, dtype=torch.int32) << (23 - mantissa_bits)).view(
            torch.float32
        )
        assert torch.equal(magnitude_edges(mantissa_bits), edges.double())


def test_forward_keeps_min_max_and_counts_every_value():
    observer = observed(FloatBinObserver(), torch.tensor([1.0, -2.0, 3.0]), torch.empty(0), torch.tensor([0.5]))
    assert observer.min_val.item() == -2.0 and observer.max_val.item() == 3.0
    assert observer.bin_counts.sum().item() == 4
    assert torch.equal(observer.calculate_qparams()[0], expected_affine(-2.0, 3.0)[0])


# --- percentile ----------------------------------------------------------------------------------------


def test_percentile_cuts_half_the_rest_from_each_tail():
    # 9,990 values of 1.0 fill the bin [1, 1 + 2^-7); 10 values of 100 are the top 0.1 %. Keeping 99.8 %
    # cuts 0.1 % from each tail: the upper cut is exactly where the bin of 1.0 ends; the lower one lies
    # inside it, above zero, so the range starts at zero.
    data = torch.cat([torch.ones(9990), torch.full((10,), 100.0)])
    scale, zero_point = observed(qgraph.PercentileObserver(percentile=99.8), data).calculate_qparams()
    expected_scale, expected_zero = expected_affine(0.0, 1.0 + 2**-7)
    assert torch.equal(scale, expected_scale) and torch.equal(zero_point, expected_zero)


def test_percentile_of_absolute_values_for_symmetric_schemes():
    # |x|: 9,995 values of 2.0 and 5 of 3.0; the 99.9th percentile (count 9,990) lies 9,990 / 9,995 of the
    # way through the bin [2, 2 + 2^-6) that holds the 2.0s (values taken as spread uniformly in a bin).
    data = torch.cat([torch.full((9995,), 2.0), torch.full((5,), -3.0)])
    observer = qgraph.PercentileObserver(percentile=99.9, dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    scale, zero_point = observed(observer, data).calculate_qparams()
    threshold = 2.0 + 2**-6 * 9990 / 9995
    assert scale.item() == pytest.approx(threshold / 127.5, rel=1e-6)
    assert zero_point.item() == 0


def test_percentile_100_is_min_max():
    data = torch.randn(5000)
    assert torch.equal(
        observed(qgraph.PercentileObserver(percentile=100.0), data).calculate_qparams()[0],
        observed(MinMaxObserver(), data).calculate_qparams()[0],
    )


# --- entropy -------------------------------------------------------------------------------------------


def test_entropy_keeps_the_whole_range_of_uniform_data():
    # Every level of Q then holds bins of equal count, so Q = P at the full range and nowhere else.
    data = uniform_bulk()
    scale, zero_point = observed(qgraph.EntropyObserver(), data).calculate_qparams()
    assert torch.equal(scale, expected_affine(0.0, data.max().item())[0]) and zero_point.item() == 0


def test_entropy_clips_a_far_outlier_down_to_the_smallest_threshold_searched():
    # One value at 100 above a uniform bulk in [0, 1]: 2,048 bins of |x| up to 100, 256 levels (quint8).
    # Thresholds start at one bin per level, 256 bins = 12.5, where Q equals P but for the outlier's bin:
    # KL is least there.
    data = torch.cat([uniform_bulk(), torch.tensor([100.0])])
    scale, _ = observed(qgraph.EntropyObserver(), data).calculate_qparams()
    assert scale.item() == pytest.approx(12.5 / 255, rel=1e-6)


def test_entropy_keeps_the_range_of_too_few_values():
    data = torch.randn(80)
    assert torch.equal(
        observed(qgraph.EntropyObserver(), data).calculate_qparams()[0],
        observed(MinMaxObserver(), data).calculate_qparams()[0],
    )


def reference_kl(histogram: torch.Tensor, length: int, levels: int) -> float:
    """TensorRT's KL(P || Q) for a threshold at ``length`` bins, one bin at a time."""
    p = histogram[:length].clone()
    p[-1] += histogram[length:].sum()
    q = torch.zeros(length, dtype=torch.float64)
    for level in range(levels):
        bins = [b for b in range(length) if b * levels // length == level]
        occupied = [b for b in bins if p[b] > 0]
        total = sum(histogram[b].item() for b in bins)
        for b in occupied:
            q[b] = total / len(occupied) if total > 0 else 1e-4
    p, q = p / p.sum(), q / q.sum()
    return sum(p[b].item() * math.log(p[b].item() / q[b].item()) for b in range(length) if p[b] > 0)


def test_kl_from_prefix_sums_equals_tensorrts_definition():
    generator = torch.Generator().manual_seed(0)
    histogram = torch.rand(64, dtype=torch.float64, generator=generator) * (torch.rand(64, generator=generator) > 0.3)
    histogram[20] = 0.0
    lengths = torch.tensor([16, 17, 21, 33, 40, 64])
    divergences = _kl_divergences(histogram, lengths, 16)
    for length, divergence in zip(lengths.tolist(), divergences.tolist()):
        assert divergence == pytest.approx(reference_kl(histogram, length, 16), rel=1e-9, abs=1e-12)


# --- MSE -----------------------------------------------------------------------------------------------


def test_mse_range_minimises_clipping_plus_rounding_error():
    # N uniform values in [0, 1] and K values at v > 1; a range [0, h] with 1 <= h <= v errs by
    # K (v - h)^2 from clipping plus N s^2 / 12 from rounding (s = h / 255), least at
    # h = K v / (K + N / (12 * 255^2)).
    count, outliers, v = 1 << 20, 1, 4.0
    data = torch.cat([uniform_bulk(count), torch.full((outliers,), v)])
    scale, zero_point = observed(qgraph.MSEObserver(), data).calculate_qparams()
    best = outliers * v / (outliers + count / (12 * 255**2))
    assert scale.item() * 255 == pytest.approx(best, rel=2 ** (1 / 256) - 1)
    assert zero_point.item() == 0


def fake_quantization_error(data: torch.Tensor, scale: float, zero_point: int) -> float:
    return (torch.fake_quantize_per_tensor_affine(data, scale, zero_point, 0, 255) - data).pow(2).sum().item()


def test_mse_range_is_close_to_a_brute_force_search():
    # The search minimises a model of the error (rounding noise of step^2 / 12), so on a sample the actual
    # error lands within a few percent of the best range a brute-force search over actual errors finds.
    torch.manual_seed(0)
    data = torch.distributions.Laplace(0.0, 1.0).sample((20_000,)).relu()
    scale, zero_point = observed(qgraph.MSEObserver(), data).calculate_qparams()
    chosen = fake_quantization_error(data, scale.item(), int(zero_point))
    high = data.max().item()
    brute_force = min(fake_quantization_error(data, high * r / 255, 0) for r in torch.linspace(0.05, 1, 200).tolist())
    assert chosen <= 1.03 * brute_force


# --- the observer interface ----------------------------------------------------------------------------


@pytest.mark.parametrize("calibrator", CALIBRATORS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("qscheme", [torch.per_tensor_affine, torch.per_tensor_symmetric])
def test_scripted_observer_gives_the_eager_qparams(calibrator, qscheme):
    data = torch.randn(8, 16, 12, 12) * 3 + 0.5
    dtype = torch.quint8 if qscheme == torch.per_tensor_affine else torch.qint8
    eager = observed(calibrator(dtype=dtype, qscheme=qscheme, reduce_range=True), data, data.relu())
    scripted = observed(
        torch.jit.script(calibrator(dtype=dtype, qscheme=qscheme, reduce_range=True)), data, data.relu()
    )
    for mine, theirs in zip(scripted.calculate_qparams(), eager.calculate_qparams()):
        assert torch.equal(mine, theirs)


def test_observer_without_data_warns_and_gives_default_qparams():
    with pytest.warns(UserWarning, match="must run observer before calling calculate_qparams"):
        scale, zero_point = qgraph.MSEObserver().calculate_qparams()
    assert scale.tolist() == [1.0] and zero_point.tolist() == [0]


def test_non_finite_data_and_bad_arguments_are_refused():
    observer = observed(qgraph.PercentileObserver(), torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        observer.calculate_qparams()
    with pytest.raises(ValueError, match="per-tensor qscheme"):
        qgraph.MSEObserver(qscheme=torch.per_channel_affine)
    with pytest.raises(ValueError, match="is_dynamic"):
        qgraph.EntropyObserver(is_dynamic=True)
    with pytest.raises(ValueError, match="percentile"):
        qgraph.PercentileObserver(percentile=0.0)


@pytest.fixture(scope="module")
def small_resnet():
    torch.manual_seed(0)
    model = randomize_batchnorm(ResNetLike(width=4, blocks_per_stage=1)).eval()
    return model, torch.jit.script(model), calibration_batches((2, 3, 32, 32), count=2)


def qconfig_with(calibrator) -> QConfig:
    return QConfig(activation=calibrator.with_args(reduce_range=True), weight=default_per_channel_weight_observer)


def test_quantize_jit_with_the_calibrators_equals_pytorchs_graph_mode(small_resnet):
    model, scripted, batches = small_resnet
    qconfig_dict = {
        "": qconfig_with(qgraph.PercentileObserver),
        "layer2": qconfig_with(qgraph.EntropyObserver),
        "layer4": qconfig_with(qgraph.MSEObserver),
    }
    # Saved and loaded halfway through calibration: the calibrators' state and bin counting survive it.
    # (Not before: PyTorch's per-channel weight observer cannot resize the buffers a load gives it.)
    prepared = qgraph.prepare_jit(scripted, qconfig_dict)
    calibrate(prepared, batches[:1])
    prepared = reloaded(prepared)
    calibrate(prepared, batches[1:])
    quantized = qgraph.convert_jit(prepared)
    reference = reference_quantize_jit(scripted, qconfig_dict, calibrate, [batches])
    x = batches[0]
    assert_bitwise_equal(quantized(x), reference(x))
    assert sqnr(model(x), quantized(x)) > 15


class EagerNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.quant, self.dequant = QuantStub(), DeQuantStub()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.quant(x)).mean((2, 3))
        return self.dequant(self.fc(x))


@pytest.mark.parametrize("calibrator", CALIBRATORS, ids=lambda c: c.__name__)
def test_eager_prepare_and_convert_use_the_calibrators_qparams(calibrator):
    torch.manual_seed(0)
    model = EagerNet().eval()
    model.qconfig = qconfig_with(calibrator)
    prepared = eager_prepare(model)
    batches = calibration_batches((4, 3, 16, 16), count=3)
    calibrate(prepared, batches)
    scale, zero_point = prepared.conv.activation_post_process.calculate_qparams()
    quantized = eager_convert(prepared)
    assert quantized.conv.scale == pytest.approx(scale.item()) and quantized.conv.zero_point == int(zero_point)
    assert sqnr(model(batches[0]), quantized(batches[0])) > 15

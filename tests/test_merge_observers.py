"""merge_observers and all_reduce_observers: two calibrations combined into the one a single pass gives.

Exact observers (min-max, the fixed-bin calibrators) must give the state of
one pass over all the data, bit for bit, in either order; HistogramObserver
must stay within the stated bound; whole prepared models (qgraph's and
eager) merge observer by observer; two processes all-reducing over gloo
give the single-process calibration.
"""

from __future__ import annotations

import pytest
import torch
from torch.ao.quantization import (
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    PerChannelMinMaxObserver,
    QConfig,
    default_per_channel_weight_observer,
)
from torch.ao.quantization import convert as eager_convert
from torch.ao.quantization import prepare as eager_prepare

import qgraph
from examples import distributed_calibration
from helpers.models import calibrate
from helpers.numerics import assert_bitwise_equal
from qgraph.quant.merge import observers_of

EXACT = [
    MinMaxObserver,
    PerChannelMinMaxObserver,
    qgraph.PercentileObserver,
    qgraph.EntropyObserver,
    qgraph.MSEObserver,
]


def shards() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    first = [torch.randn(4, 8, 6, 6, generator=generator) * 2 for _ in range(2)]
    second = [torch.randn(4, 8, 6, 6, generator=generator) * 5 + 1 for _ in range(2)]
    return first, second


def calibrated(observer, batches):
    calibrate(observer, batches)
    return observer


def buffers(observer) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in observer.named_buffers()}


def assert_same_state(actual, expected) -> None:
    mine, theirs = buffers(actual), buffers(expected)
    assert mine.keys() == theirs.keys()
    for name in mine:
        assert_bitwise_equal(mine[name], theirs[name], what=name)


@pytest.mark.parametrize("observer_class", EXACT, ids=lambda c: c.__name__)
@pytest.mark.parametrize("scripted", [False, True], ids=["eager", "scripted"])
def test_exact_merge_is_the_single_pass_state_in_either_order(observer_class, scripted):
    def make():
        observer = observer_class()
        return torch.jit.script(observer) if scripted else observer

    first, second = shards()
    a, b = calibrated(make(), first), calibrated(make(), second)
    single = calibrated(make(), first + second)
    a_before = buffers(a)
    for merged in (qgraph.merge_observers(a, b), qgraph.merge_observers(b, a)):
        assert_same_state(merged, single)
        for mine, theirs in zip(merged.calculate_qparams(), single.calculate_qparams()):
            assert_bitwise_equal(mine, theirs, what="qparams")
    assert all(torch.equal(value, a_before[name]) for name, value in buffers(a).items())


def test_merge_with_an_observer_that_saw_nothing_keeps_the_other():
    first, _ = shards()
    seen = calibrated(qgraph.MSEObserver(), first)
    for merged in (
        qgraph.merge_observers(seen, qgraph.MSEObserver()),
        qgraph.merge_observers(qgraph.MSEObserver(), seen),
    ):
        assert_same_state(merged, seen)


def test_inplace_merge_changes_the_first_observer():
    first, second = shards()
    a = calibrated(MinMaxObserver(), first)
    assert qgraph.merge_observers(a, calibrated(MinMaxObserver(), second), inplace=True) is a
    assert_same_state(a, calibrated(MinMaxObserver(), first + second))


def test_histogram_merge_stays_within_one_old_bin_of_each_side():
    first, second = shards()
    a, b = calibrated(HistogramObserver(), first[:1]), calibrated(HistogramObserver(), second[:1])
    merged = qgraph.merge_observers(a, b)
    low, high = merged.min_val.item(), merged.max_val.item()
    assert low == min(a.min_val.item(), b.min_val.item()) and high == max(a.max_val.item(), b.max_val.item())
    exact = torch.histc(torch.cat([first[0].flatten(), second[0].flatten()]), a.bins, low, high).double()
    # At every new edge: the old bin of each side that straddles it is the most a count can have moved.
    new_edges = torch.linspace(low, high, a.bins + 1, dtype=torch.float64)[1:]
    bound = torch.zeros(a.bins, dtype=torch.float64)
    for side in (a, b):
        width = (side.max_val - side.min_val).item() / side.bins
        straddling = ((new_edges - side.min_val.item()) / width).floor().long().clamp(0, side.bins - 1)
        bound += side.histogram.double()[straddling]
    drift = (merged.histogram.double().cumsum(0) - exact.cumsum(0)).abs()
    assert (drift <= bound + 1e-3).all()
    assert merged.histogram.sum().item() == pytest.approx(exact.sum().item())


def test_histogram_merge_over_equal_ranges_adds_the_counts():
    data = torch.linspace(-3, 3, 1000)
    a, b = calibrated(HistogramObserver(), [data]), calibrated(HistogramObserver(), [data.flip(0)])
    assert_bitwise_equal(qgraph.merge_observers(a, b).histogram, a.histogram * 2, what="histogram")


def test_observers_that_cannot_merge_are_refused():
    first, second = shards()
    moving = [calibrated(MovingAverageMinMaxObserver(), batches) for batches in (first, second)]
    with pytest.raises(TypeError, match="moving average"):
        qgraph.merge_observers(*moving)
    with pytest.raises(ValueError, match="differ"):
        qgraph.merge_observers(calibrated(MinMaxObserver(), first), calibrated(qgraph.MSEObserver(), second))
    with pytest.raises(ValueError, match="no observer"):
        qgraph.merge_observers(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))


def qconfig_dict() -> dict:
    return {
        "": QConfig(
            activation=qgraph.MSEObserver.with_args(reduce_range=True), weight=default_per_channel_weight_observer
        )
    }


def test_prepared_models_merge_observer_by_observer():
    model = distributed_calibration.make_model()
    batches = distributed_calibration.calibration_batches()
    halves = [qgraph.prepare_jit(model, qconfig_dict()) for _ in range(2)]
    single = qgraph.prepare_jit(model, qconfig_dict())
    for i, batch in enumerate(batches):
        halves[i % 2](batch)
        single(batch)
    merged = qgraph.merge_observers(*halves)
    assert len(list(observers_of(merged))) > 3
    for (path, mine), (single_path, theirs) in zip(observers_of(merged), observers_of(single)):
        assert path == single_path
        assert_same_state(mine, theirs)
    x = batches[0]
    assert_bitwise_equal(qgraph.convert_jit(merged)(x), qgraph.convert_jit(single)(x))


def test_eager_prepared_models_merge():
    torch.manual_seed(0)
    model = torch.ao.quantization.QuantWrapper(torch.nn.Sequential(torch.nn.Conv2d(8, 4, 3), torch.nn.ReLU())).eval()
    model.qconfig = qconfig_dict()[""]
    first, second = shards()
    halves = [eager_prepare(model, inplace=False) for _ in range(2)]
    single = eager_prepare(model, inplace=False)
    for half, data in zip(halves, (first, second)):
        calibrated(half, data)
    calibrated(single, first + second)
    merged = eager_convert(qgraph.merge_observers(*halves))
    assert_bitwise_equal(merged(first[0]), eager_convert(single)(first[0]))


def test_models_with_different_observers_are_refused():
    model = distributed_calibration.make_model()
    other = {
        "": QConfig(activation=MinMaxObserver.with_args(reduce_range=True), weight=default_per_channel_weight_observer)
    }
    with pytest.raises(ValueError, match="differ"):
        qgraph.merge_observers(qgraph.prepare_jit(model, qconfig_dict()), qgraph.prepare_jit(model, other))


def test_two_processes_all_reducing_over_gloo_give_the_single_process_calibration():
    merged = distributed_calibration.calibrate_distributed(["mse", "histogram"], world_size=2)
    # Exact for qgraph's calibrators and min-max (the weights): one process on all the data.
    for (_, mine), (_, theirs) in zip(
        observers_of(merged["mse"]), observers_of(distributed_calibration.calibrate_single("mse"))
    ):
        assert_same_state(mine, theirs)
    # HistogramObserver's merge is approximate: the processes agree with merge_observers on the two shards.
    halves = [distributed_calibration.prepare("histogram") for _ in range(2)]
    for i, batch in enumerate(distributed_calibration.calibration_batches()):
        halves[i % 2](batch)
    for (_, mine), (_, theirs) in zip(observers_of(merged["histogram"]), observers_of(qgraph.merge_observers(*halves))):
        assert_same_state(mine, theirs)

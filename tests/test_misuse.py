"""Common mistakes get a clear answer: the error type and its words, or one warning.

Each test is one mistake a new user makes with the JIT API: NaN or inf in
the calibration data, converting a model that was never prepared, a dynamic
qconfig given to the static API, a model left in training mode, no (or
only empty) calibration data, activations too large for int8. What the
command line says about models that are not (or not statically) quantized
is in test_cli.py and test_report.py.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
from torch.ao.quantization import (
    HistogramObserver,
    QConfig,
    default_dynamic_qconfig,
    default_per_channel_qconfig,
    default_qconfig,
    float16_dynamic_qconfig,
    get_default_qconfig,
)
from torch.ao.quantization import convert_jit as reference_convert_jit
from torch.ao.quantization import prepare_jit as reference_prepare_jit
from torch.testing import FileCheck

import qgraph
from helpers.models import calibrate, capture
from qgraph.quant.observer_state import QUANTIZABLE_RANGE

TRACING = pytest.mark.parametrize("tracing", [False, True], ids=["script", "trace"])
X86 = get_default_qconfig("x86")


class ConvLogConv(nn.Module):
    """Finite inputs, but log of the first conv's negative outputs is NaN."""

    def __init__(self):
        super().__init__()
        self.first = nn.Conv2d(3, 4, 3)
        self.second = nn.Conv2d(4, 4, 3)

    def forward(self, x):
        y = torch.log(self.first(x))  # the NaN comes from here
        return self.second(y)


class ConvLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def _with_nan(batch: torch.Tensor) -> torch.Tensor:
    batch = batch.clone()
    batch[0, 0, 0, 0] = float("nan")
    return batch


# --- non-finite calibration data ----------------------------------------------------------------


@TRACING
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_data_names_the_first_observed_value_that_saw_it(tracing, bad):
    torch.manual_seed(0)
    model = capture(ConvLinear(), torch.randn(1, 3, 6, 6), tracing)
    prepared = qgraph.prepare_jit(model, {"": default_qconfig})
    batch = torch.randn(2, 3, 6, 6)
    batch[1, 2, 3, 3] = bad
    calibrate(prepared, [torch.randn(2, 3, 6, 6), batch])
    with pytest.raises(ValueError, match=r"calibration data holds non-finite values \(NaN or inf\)") as raised:
        qgraph.convert_jit(prepared)
    message = str(raised.value)
    # The model input is the first value the observers see.
    assert "the first observed value that saw them is %" in message
    assert "an input of the model" in message
    assert "\n" not in message


@TRACING
def test_non_finite_values_made_inside_the_model_name_the_op_and_its_source_line(tracing):
    torch.manual_seed(0)
    model = capture(ConvLogConv(), torch.randn(1, 3, 8, 8), tracing)
    prepared = qgraph.prepare_jit(model, {"": default_qconfig})
    calibrate(prepared, [torch.randn(2, 3, 8, 8)])
    with pytest.raises(ValueError, match="calibration data holds non-finite values") as raised:
        qgraph.convert_jit(prepared)
    # The log's output (read by `second`) is the first observed value holding NaN.
    assert "in the model (test_misuse.py:" in str(raised.value)
    line = next(i for i, text in enumerate(open(__file__).read().splitlines(), 1) if "the NaN comes from here" in text)
    assert f"test_misuse.py:{line})" in str(raised.value)


@pytest.mark.parametrize("nan_batch", [0, 1], ids=["first_batch", "later_batch"])
def test_quantize_jit_turns_the_histogram_observer_failure_into_a_short_error(nan_batch):
    torch.manual_seed(0)
    model = torch.jit.script(ConvLinear().eval())
    batches = [torch.randn(2, 3, 6, 6), torch.randn(2, 3, 6, 6)]
    batches[nan_batch] = _with_nan(batches[nan_batch])
    with pytest.raises(ValueError, match="calibration data holds non-finite values") as raised:
        qgraph.quantize_jit(model, {"": X86}, calibrate, [batches])
    message = str(raised.value)
    assert "Traceback" not in message and "\n" not in message
    if nan_batch == 0:
        # The histogram observer kept the NaN range it failed on.
        assert "the first observed value that saw them is %" in message
    else:
        assert "an observer failed on them (RuntimeError: torch.histc: range of [nan, nan] is not finite)" in message


def test_other_calibration_errors_pass_through_quantize_jit():
    model = torch.jit.script(ConvLinear().eval())
    with pytest.raises(RuntimeError, match="channels"):
        qgraph.quantize_jit(model, {"": X86}, calibrate, [[torch.randn(2, 5, 6, 6)]])


# --- convert without prepare ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "convert, prepare_api",
    [(qgraph.convert_jit, "prepare_jit"), (qgraph.convert_dynamic_jit, "prepare_dynamic_jit")],
    ids=["static", "dynamic"],
)
def test_convert_of_a_model_never_prepared_is_refused(convert, prepare_api):
    model = torch.jit.script(ConvLinear().eval())
    with pytest.raises(ValueError, match=f"the model has no observers: it was not prepared. Call qgraph.{prepare_api}"):
        convert(model)


class Adds(nn.Module):
    def forward(self, x, y):
        return x + y


@pytest.mark.parametrize("debug", [False, True])
def test_convert_of_a_prepared_model_with_nothing_to_observe_gives_the_float_model(debug):
    # An add of two model inputs is quantized only when something observes them.
    model = torch.jit.script(Adds())
    prepared = qgraph.prepare_jit(model, {"": X86})
    x, y = torch.randn(2, 3), torch.randn(2, 3)
    prepared(x, y)
    converted = qgraph.convert_jit(prepared, debug=debug)
    assert not converted._c.hasattr("_qgraph_prepared")
    assert torch.equal(converted(x, y), x + y)


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 4)

    def forward(self, x):
        return self.lstm(x)[0]


def test_convert_of_a_dynamic_model_whose_rnn_prepare_quantized_is_accepted():
    # prepare_dynamic_jit quantizes an LSTM itself and leaves no observer.
    model = torch.jit.script(Recurrent().eval())
    converted = qgraph.convert_dynamic_jit(qgraph.prepare_dynamic_jit(model, {"": default_dynamic_qconfig}))
    FileCheck().check("aten::quantized_lstm").run(str(converted.graph))


# --- a qconfig of the other kind -----------------------------------------------------------------


@pytest.mark.parametrize("qconfig", [default_dynamic_qconfig, float16_dynamic_qconfig], ids=["int8", "fp16"])
@pytest.mark.parametrize("api", ["prepare_jit", "quantize_jit"])
def test_a_dynamic_qconfig_to_the_static_api_names_the_dynamic_api(api, qconfig):
    model = torch.jit.script(ConvLinear().eval())
    with pytest.raises(ValueError, match=r"qconfig_dict\[''\] is a dynamic qconfig .* use quantize_dynamic_jit"):
        if api == "prepare_jit":
            qgraph.prepare_jit(model, {"": qconfig})
        else:
            qgraph.quantize_jit(model, {"": qconfig}, calibrate, [[torch.randn(1, 3, 6, 6)]])


def test_a_static_qconfig_to_the_dynamic_api_quantizes_linears_dynamically_as_the_reference_does():
    # PyTorch's own tests pass default_qconfig to prepare_dynamic_jit: the
    # weight observer quantizes weights, activations get qparams at run time.
    model = torch.jit.script(ConvLinear().eval())
    quantized = qgraph.quantize_dynamic_jit(model, {"": default_qconfig})
    FileCheck().check("quantized::linear_dynamic").run(str(quantized.graph))


# --- training mode -------------------------------------------------------------------------------


class ConvBn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x))


@TRACING
@pytest.mark.parametrize("api", ["prepare_jit", "quantize_jit", "fuse_conv_bn_jit"])
def test_a_model_in_training_mode_is_refused_with_a_call_to_eval(api, tracing):
    model = ConvBn().train()
    example = torch.randn(2, 3, 6, 6)
    captured = torch.jit.trace(model, example) if tracing else torch.jit.script(model)
    with pytest.raises(
        ValueError,
        match=r"the model is in training mode \(its BatchNorm 'bn' normalises with batch "
        r"statistics\); .* call model.eval\(\) before scripting or tracing it",
    ):
        if api == "prepare_jit":
            qgraph.prepare_jit(captured, {"": default_qconfig})
        elif api == "quantize_jit":
            qgraph.quantize_jit(captured, {"": default_qconfig}, calibrate, [[example]])
        else:
            qgraph.fuse_conv_bn_jit(captured)


def test_a_model_traced_in_training_mode_stays_refused_after_eval():
    traced = torch.jit.trace(ConvBn().train(), torch.randn(2, 3, 6, 6)).eval()
    with pytest.raises(ValueError, match="keeps the mode it was traced in"):
        qgraph.prepare_jit(traced, {"": default_qconfig})


# --- calibration that reached no value -----------------------------------------------------------


def _conversion_warnings(prepared) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qgraph.convert_jit(prepared)
    return [str(w.message) for w in caught if "calibration data" in str(w.message)]


@TRACING
@pytest.mark.parametrize("batches", [[], [torch.empty(0, 3, 6, 6)] * 2], ids=["no_calibration", "empty_batches"])
def test_observers_that_saw_no_data_are_listed_once_by_module_path(tracing, batches):
    torch.manual_seed(0)
    prepared = qgraph.prepare_jit(capture(ConvLinear(), torch.randn(1, 3, 6, 6), tracing), {"": X86})
    calibrate(prepared, batches)
    found = _conversion_warnings(prepared)
    assert len(found) == 1
    assert found[0].startswith("3 observed value(s) saw no calibration data")
    assert "default qparams (scale 1.0, zero point 0)" in found[0]
    assert "an input of the model" in found[0]
    # the outputs of the conv and of the linear, observed where the model calls them
    assert "in the model, the output of 'conv'" in found[0] and "in the model, the output of 'fc'" in found[0]
    if not tracing:  # a traced call keeps no source line
        assert found[0].count("' (test_misuse.py:") == 2


class AuxBranch(nn.Module):
    """A conv only a flag reaches, as a training-only auxiliary head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.aux = nn.Conv2d(3, 8, 3)

    def forward(self, x, with_aux: bool = False):
        y = self.conv(x)
        if with_aux:
            y = y + self.aux(x)
        return y


@pytest.mark.parametrize("qconfig", [X86, default_per_channel_qconfig], ids=["x86", "per_channel"])
def test_weights_calibration_never_reached_are_observed_from_the_weight(qconfig):
    torch.manual_seed(0)
    model = torch.jit.script(AuxBranch().eval())
    prepared = qgraph.prepare_jit(model, {"": qconfig})
    calibrate(prepared, [torch.randn(2, 3, 6, 6)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantized = qgraph.convert_jit(prepared, debug=True)
    # Values inside the branch calibration never took do not make the warning.
    assert not [w for w in caught if "calibration data" in str(w.message)]
    expected = qconfig.weight()
    expected(model.aux.weight)
    scales, zero_points = expected.calculate_qparams()
    attributes = dict(torch._C._jit_debug_module_iterators(quantized.aux._c)["named_attributes"])
    assert torch.equal(next(v for k, v in attributes.items() if "_scale_" in k), scales.float())
    assert torch.equal(next(v for k, v in attributes.items() if "_zero_point_" in k), zero_points.int())
    assert quantized(torch.randn(2, 3, 6, 6), True).shape == (2, 8, 4, 4)


# --- activations out of a quantizable range ------------------------------------------------------


def test_huge_activations_warn_and_take_the_whole_range_without_the_histogram_search():
    torch.manual_seed(0)
    qconfig = QConfig(activation=HistogramObserver.with_args(reduce_range=True), weight=X86.weight)
    model = torch.jit.script(ConvLinear().eval())
    prepared = qgraph.prepare_jit(model, {"": qconfig})
    calibrate(prepared, [torch.randn(2, 3, 6, 6) * 1e18])
    observer = next(m for name, m in prepared.named_children() if name.startswith("_observer_"))
    assert observer.max_val.item() > QUANTIZABLE_RANGE
    whole_range_scale = observer._calculate_qparams(observer.min_val, observer.max_val)[0].item()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantized = qgraph.convert_jit(prepared, debug=True)
    found = [str(w.message) for w in caught if "out of a quantizable range" in str(w.message)]
    assert len(found) == 1
    assert found[0].startswith("3 activation(s) are out of a quantizable range (magnitude above 1e+14")
    assert "an input of the model: " in found[0]
    scales = [v for k, v in torch._C._jit_debug_module_iterators(quantized._c)["named_attributes"] if "_scale_" in k]
    assert whole_range_scale in scales


def test_ordinary_ranges_keep_the_histogram_search_and_the_reference_bits():
    torch.manual_seed(0)
    model = torch.jit.script(ConvLinear().eval())
    batches = [torch.randn(2, 3, 6, 6) * 1e6]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = qgraph.quantize_jit(model, {"": X86}, calibrate, [batches])
    assert not [w for w in caught if "quantizable range" in str(w.message)]
    reference = reference_prepare_jit(model, {"": X86})
    calibrate(reference, batches)
    reference = reference_convert_jit(reference)
    assert torch.equal(ours(batches[0]), reference(batches[0]))


class UnusedBatchNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.spare = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.conv(x)


def test_a_batch_norm_the_trace_never_called_is_no_training_mode():
    traced = torch.jit.trace(UnusedBatchNorm().eval(), torch.randn(1, 3, 6, 6))
    prepared = qgraph.prepare_jit(traced, {"": default_qconfig})
    assert prepared(torch.randn(1, 3, 6, 6)).shape == (1, 4, 4, 4)

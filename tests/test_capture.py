import pytest
import torch
import torch.nn.functional as F

from qgraph.capture import CaptureError, capture


class ConvLinear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.flatten(F.relu(self.conv(x)), 1))


@pytest.mark.parametrize("method", ["script", "trace", "fx"])
def test_each_method_matches_eager(method):
    torch.manual_seed(0)
    model = ConvLinear().eval()
    x = torch.randn(2, 3, 6, 6)
    captured = capture(model, x, method=method)
    assert isinstance(captured, torch.jit.ScriptModule)
    assert torch.equal(captured(x), model(x))


class TwoInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 3)

    def forward(self, x, y):
        return self.fc(x) * y


def test_trace_takes_a_tuple_of_inputs():
    torch.manual_seed(0)
    model = TwoInputs()
    x, y = torch.randn(2, 3), torch.randn(2, 3)
    traced = capture(model, (x, y), method="trace")
    assert torch.equal(traced(x, y), model(x, y))


@pytest.mark.parametrize("method", ["script", "trace", "fx"])
@pytest.mark.parametrize("training", [True, False])
def test_capture_keeps_the_models_mode(method, training):
    torch.manual_seed(0)
    model = ConvLinear().train(training)
    captured = capture(model, torch.randn(1, 3, 6, 6), method=method)
    assert model.training is training
    assert captured.training is training


def test_script_returns_a_script_module_as_is():
    scripted = torch.jit.script(ConvLinear())
    assert capture(scripted) is scripted


@pytest.mark.parametrize("method", ["trace", "fx"])
def test_trace_and_fx_refuse_a_script_module(method):
    scripted = torch.jit.script(ConvLinear())
    with pytest.raises(ValueError, match="already a ScriptModule"):
        capture(scripted, torch.randn(1, 3, 6, 6), method=method)


def test_unknown_method_lists_the_choices():
    with pytest.raises(ValueError, match="'onnx'.*'script', 'trace', 'fx'"):
        capture(ConvLinear(), method="onnx")


def test_trace_needs_example_inputs():
    with pytest.raises(ValueError, match="method='trace' needs example_inputs"):
        capture(ConvLinear(), method="trace")


def test_trace_rejects_inputs_of_the_wrong_kind():
    with pytest.raises(TypeError, match="example_inputs must be a tensor or a tuple.*list"):
        capture(ConvLinear(), [torch.randn(1, 3, 6, 6)], method="trace")


def test_fx_needs_no_example_inputs():
    torch.manual_seed(0)
    model = ConvLinear().eval()
    x = torch.randn(1, 3, 6, 6)
    assert torch.equal(capture(model, method="fx")(x), model(x))


def test_a_non_module_is_a_type_error():
    with pytest.raises(TypeError, match="torch.nn.Module, got function"):
        capture(lambda x: x)


class Unscriptable(torch.nn.Module):
    def forward(self, x):
        try:
            return x + 1
        except RuntimeError:
            return x


def test_script_failure_names_the_method_and_keeps_pytorchs_message():
    with pytest.raises(CaptureError, match=r"method='script' failed.*try blocks aren't supported") as info:
        capture(Unscriptable())
    assert info.value.__cause__ is not None


class BranchesOnValues(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x


def test_fx_failure_says_what_fx_needs():
    with pytest.raises(CaptureError, match=r"method='fx' failed \(symbolic tracing needs.*\): .*control flow"):
        capture(BranchesOnValues(), method="fx")


def test_trace_failure_includes_pytorchs_message():
    with pytest.raises(CaptureError, match=r"method='trace' failed: .*channels"):
        capture(ConvLinear(), torch.randn(1, 5, 6, 6), method="trace")


def test_capture_error_is_a_runtime_error():
    assert issubclass(CaptureError, RuntimeError)

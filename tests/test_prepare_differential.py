"""qgraph.prepare against torch.ao.quantization.prepare_jit / prepare_dynamic_jit.

For each model, scripted and traced: the same observed values per module
(the producer of each observed value and the observer class, in program
order) and, after the same calibration data, the same observer statistics.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.ao.quantization import (
    HistogramObserver,
    MinMaxObserver,
    PerChannelMinMaxObserver,
    QConfig,
    default_dynamic_qconfig,
    default_qconfig,
    float16_dynamic_qconfig,
    prepare_dynamic_jit,
    prepare_jit,
)
from torch.ao.quantization.quant_type import QuantType

from qgraph.prepare import prepare
from tests.helpers.observers import observed_values, observer_states

per_channel_qconfig = QConfig(
    activation=MinMaxObserver.with_args(reduce_range=True),
    weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric),
)
histogram_qconfig = QConfig(
    activation=HistogramObserver.with_args(bins=64, reduce_range=True),
    weight=MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric),
)


class ConvLinearStack(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 6, 3)
        self.fc1 = nn.Linear(6 * 4 * 4, 16)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x):
        x = self.relu(self.conv1(x))
        x = F.max_pool2d(self.conv2(x), 1)
        x = x.reshape(x.size(0), -1)
        return self.fc2(F.relu(self.fc1(x)))


class ResidualBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + x)


class ResidualNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.layer1 = ResidualBlock(4)
        self.layer2 = ResidualBlock(4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.head(torch.flatten(self.pool(x), 1))


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.left = nn.Conv2d(3, 3, 1)
        self.use_left = True

    def forward(self, x):
        x = self.conv(x)
        if self.use_left:
            x = self.left(x)
        else:
            x = torch.flatten(x, 2)
        return x


class TwinBlocks(nn.Module):
    """Two instances of one class type (shared type)."""

    def __init__(self):
        super().__init__()
        self.a = ResidualBlock(3)
        self.b = ResidualBlock(3)

    def forward(self, x):
        return self.b(self.a(x))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.size()
    x = x.view(n, groups, c // groups, h, w)
    return torch.transpose(x, 1, 2).contiguous().view(n, -1, h, w)


class WithHelper(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 1)
        self.conv2 = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.conv2(channel_shuffle(self.conv1(x), 2))


class Stage(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        return self.fc(x)


class ListOfStages(nn.Module):
    def __init__(self):
        super().__init__()
        self.stages = nn.ModuleList([Stage() for _ in range(3)])

    def forward(self, x) -> list[torch.Tensor]:
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs


class CatAddMul(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 1)
        self.conv2 = nn.Conv2d(3, 3, 1)
        self.norm = nn.LayerNorm([3, 5, 5])

    def forward(self, x):
        a = self.conv1(x)
        b = self.conv2(x)
        c = torch.cat([a, b], 1)
        d = a * b
        e = torch.sigmoid(a) + 1.0
        return c, self.norm(d + e)


class LinearStack(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 4)
        self.weight = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        y = self.fc2(F.relu(self.fc1(x)))
        return torch.matmul(y, self.weight.t())


IMAGE = (2, 3, 5, 5)
CASES = [
    ("conv_linear_stack", ConvLinearStack, (2, 3, 8, 8), {"": default_qconfig}),
    ("conv_linear_stack_per_channel", ConvLinearStack, (2, 3, 8, 8), {"": per_channel_qconfig}),
    ("conv_linear_stack_histogram", ConvLinearStack, (2, 3, 8, 8), {"": histogram_qconfig}),
    ("residual", ResidualNet, (2, 3, 8, 8), {"": default_qconfig}),
    ("if_else", Branchy, IMAGE, {"": default_qconfig}),
    ("shared_class_type", TwinBlocks, IMAGE, {"": default_qconfig}),
    ("shared_class_type_child_off", TwinBlocks, IMAGE, {"": default_qconfig, "a": None}),
    ("helper_function", WithHelper, (2, 4, 3, 3), {"": default_qconfig}),
    ("module_list", ListOfStages, (2, 6), {"": default_qconfig}),
    ("cat_add_mul_norm", CatAddMul, IMAGE, {"": default_qconfig}),
    ("submodule_qconfig", ResidualNet, (2, 3, 8, 8), {"layer1": default_qconfig, "head": default_qconfig}),
]
DYNAMIC_CASES = [
    ("dynamic_int8", LinearStack, (3, 8), {"": default_dynamic_qconfig}),
    ("dynamic_fp16", LinearStack, (3, 8), {"": float16_dynamic_qconfig}),
    ("dynamic_child", LinearStack, (3, 8), {"fc2": default_dynamic_qconfig}),
]


def _capture(model_class, shape, tracing):
    torch.manual_seed(0)
    model = model_class().eval()
    example = torch.randn(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.trace(model, example, check_trace=False) if tracing else torch.jit.script(model)


def _assert_same(reference, ours, shape):
    expected, got = observed_values(reference), observed_values(ours)
    assert set(expected) == set(got)
    for path in expected:
        assert got[path] == expected[path], f"observers of {path!r} differ"
    torch.manual_seed(1)
    # Calibration only needs the interpreter; skipping graph optimisation keeps the test fast.
    with torch.jit.optimized_execution(False):
        for _ in range(3):
            x = torch.randn(shape) * 3
            reference(x)
            ours(x)
    expected_states, got_states = observer_states(reference), observer_states(ours)
    assert expected_states.keys() == got_states.keys()
    for key, state in expected_states.items():
        for name, tensor in state.items():
            assert torch.equal(got_states[key][name], tensor), f"{name} of observer {key} differs"


@pytest.mark.parametrize("tracing", [False, True], ids=["scripted", "traced"])
@pytest.mark.parametrize("name,model_class,shape,qconfig_dict", CASES, ids=[c[0] for c in CASES])
def test_static_prepare_matches_reference(name, model_class, shape, qconfig_dict, tracing):
    model = _capture(model_class, shape, tracing)
    reference = prepare_jit(model, qconfig_dict)
    ours = prepare(model, qconfig_dict)
    _assert_same(reference, ours, shape)


@pytest.mark.parametrize("tracing", [False, True], ids=["scripted", "traced"])
@pytest.mark.parametrize("name,model_class,shape,qconfig_dict", DYNAMIC_CASES, ids=[c[0] for c in DYNAMIC_CASES])
def test_dynamic_prepare_matches_reference(name, model_class, shape, qconfig_dict, tracing):
    model = _capture(model_class, shape, tracing)
    reference = prepare_dynamic_jit(model, qconfig_dict)
    ours = prepare(model, qconfig_dict, quant_type=QuantType.DYNAMIC)
    _assert_same(reference, ours, shape)

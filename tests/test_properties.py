"""Graph-rewrite invariants over randomly composed small models (hypothesis).

A model is a random chain of blocks (convs with and without relu or
BatchNorm, residual adds, scalar adds and muls, pooling, hardswish,
sigmoid, a cat of two branches), scripted or traced, under a per-tensor or
a per-channel qconfig. For each: qgraph's prepare -> calibrate -> convert
gives the reference's output bit for bit, and the ``debug=True`` model the
reference's ``debug=True`` output.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.ao.quantization import QConfig, default_observer, default_per_channel_weight_observer, default_qconfig
from torch.ao.quantization import quantize_jit as reference_quantize_jit

import qgraph
from helpers.models import calibrate, capture
from helpers.numerics import assert_bitwise_equal

CHANNELS = 4
QCONFIGS = {
    "per_tensor": default_qconfig,
    "per_channel": QConfig(activation=default_observer, weight=default_per_channel_weight_observer),
}


class Conv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


class ConvRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv(x))


class ConvBn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(CHANNELS, CHANNELS, 1)
        self.bn = nn.BatchNorm2d(CHANNELS)

    def forward(self, x):
        return self.bn(self.conv(x))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x) + x)


class ScalarOps(nn.Module):
    def forward(self, x):
        return x * 0.5 + 1.0


class Pools(nn.Module):
    def forward(self, x):
        return nn.functional.avg_pool2d(nn.functional.max_pool2d(x, 3, 1, 1), 3, 1, 1)


class Activations(nn.Module):
    def __init__(self):
        super().__init__()
        self.hardswish = nn.Hardswish()

    def forward(self, x):
        return torch.sigmoid(self.hardswish(x))


class CatBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.left = nn.Conv2d(CHANNELS, CHANNELS // 2, 1)
        self.right = nn.Conv2d(CHANNELS, CHANNELS // 2, 3, padding=1)

    def forward(self, x):
        return torch.cat([self.left(x), self.right(x)], 1)


BLOCKS = [Conv, ConvRelu, ConvBn, Residual, ScalarOps, Pools, Activations, CatBranches]


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(CHANNELS, 3)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _model(blocks: list[int], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, CHANNELS, 1), *(BLOCKS[i]() for i in blocks), Head())
    with torch.no_grad():  # BatchNorm statistics other than the initial ones, so folding matters
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


@settings(max_examples=16, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    blocks=st.lists(st.integers(0, len(BLOCKS) - 1), min_size=1, max_size=4),
    tracing=st.booleans(),
    qconfig=st.sampled_from(sorted(QCONFIGS)),
    debug=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_quantized_output_equals_the_reference(blocks, tracing, qconfig, debug, seed):
    model = _model(blocks, seed)
    generator = torch.Generator().manual_seed(seed)
    batches = [torch.randn(2, 3, 6, 6, generator=generator) for _ in range(2)]
    captured = capture(model, (batches[0],), tracing)
    qconfig_dict = {"": QCONFIGS[qconfig]}
    with warnings.catch_warnings():
        # qgraph's note that debug=True leaves a scalar add/mul's kernel qparams out (so does the reference).
        warnings.filterwarnings("ignore", message="debug=True does not model add/mul with a scalar")
        ours = qgraph.quantize_jit(captured, qconfig_dict, calibrate, [batches], debug=debug)
        reference = reference_quantize_jit(captured, qconfig_dict, calibrate, [batches], debug=debug)
    x = torch.randn(2, 3, 6, 6, generator=generator)
    assert_bitwise_equal(ours(x), reference(x), f"outputs of {[BLOCKS[i].__name__ for i in blocks]}")
